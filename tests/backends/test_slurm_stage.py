"""The stage working directory's copy back, verified (issue 15's rule for every remote backend: the backend's copy
goes only after every output was fetched and verified by size and sha256). On the real one-node cluster: the job
script writes a manifest of its outputs on the node after the app, and the copy back checks every file against it.
A scratch file altered after the job wrote it is detected and named, the job's scratch copy kept; once the file is
right again, refetch brings the outputs and only then removes the copy. The worker reaches slurmrestd through a
relay (tests/backends/slurm_relay.py) that holds the answer first saying the job ended: the test alters the file
at that moment, before the worker copies anything."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from caesar_rest.db import session_scope
from caesar_rest.models import Job
from workers import kept
from workers.backends.slurm_stage import SIZES, SUMS, read_manifest

from .slurm_fixtures import SlurmStack, shared_root, slurm_options
from .slurm_relay import SlurmRelay
from .test_slurm import explain, members, metadata, slurm_record, submit, wait

RELAYED = "slurm_relayed_stage"


@pytest.fixture(scope="module")
def stage_stack(slurm_cluster) -> Iterator[tuple[SlurmStack, SlurmRelay]]:
    relay = SlurmRelay(slurm_cluster["CAESAR_TEST_SLURM_URL"])
    root = shared_root(slurm_cluster)
    (root / "relayed-scratch").mkdir()
    extra = {RELAYED: slurm_options(slurm_cluster, url=relay.url, workdir="stage",
                                    scratch=str(root / "relayed-scratch"))}
    stack = SlurmStack(slurm_cluster, root, extra, FETCH_ATTEMPTS=2)
    try:
        yield stack, relay
    finally:
        stack.close()
        relay.close()
        shutil.rmtree(root, ignore_errors=True)


def test_a_staged_jobs_outputs_are_verified_against_the_manifest_it_wrote_on_the_node(stage_stack):
    stack, relay = stage_stack
    relay.arm(hold_ended=True)
    job_id = submit(stack, "sleeper", backend=RELAYED, seconds=0, message="manifest")
    assert relay.ended_held.wait(180), explain(stack, job_id)
    rundir = Path(slurm_record(stack, job_id, RELAYED)["current_working_directory"])
    manifest = read_manifest(rundir)
    relay.release.set()
    assert manifest is not None and (rundir / SIZES).stat().st_uid == int(stack.cluster["CAESAR_TEST_SLURM_UID"])
    assert set(manifest) == {"sleeper.txt", "stdout.log", "stderr.log"}, manifest     # not inputs/, tmp/, itself
    st = wait(stack, job_id)
    assert st["state"] == "SUCCESS", explain(stack, job_id)
    out = members(stack, job_id)
    assert out["sleeper.txt"].startswith(b"manifest") and SUMS not in out and SIZES not in out, sorted(out)
    assert len(out["sleeper.txt"]) == manifest["sleeper.txt"][0]


def test_an_altered_scratch_file_is_named_the_copy_kept_and_refetch_brings_it_once_right(stage_stack):
    stack, relay = stage_stack
    relay.arm(hold_ended=True)
    job_id = submit(stack, "sleeper", backend=RELAYED, seconds=0, message="the job's own words")
    assert relay.ended_held.wait(180), explain(stack, job_id)
    rundir = Path(slurm_record(stack, job_id, RELAYED)["current_working_directory"])
    output = rundir / "sleeper.txt"
    good = output.read_bytes()
    output.write_bytes(good.replace(b"own", b"0wn"))          # one byte, the same size: only sha256 can tell
    relay.release.set()
    st = wait(stack, job_id)
    assert st["state"] == "FAILURE", explain(stack, job_id)
    assert "staged output 'sleeper.txt'" in st["status"] and "differs from what the job wrote on the node" in \
        st["status"], st
    assert f"the {RELAYED} backend's copy of the job is kept" in st["status"], st
    meta = metadata(stack, job_id)
    assert meta["kept_remote"]["handle"].endswith(str(rundir)), meta
    with session_scope(stack.app.config["DATABASE_URL"]) as s:
        workdir = Path(s.get(Job, job_id).workdir)
    assert rundir.is_dir() and not (workdir / "sleeper.txt").exists()       # the altered copy is not kept
    assert "try 2 of 2" in stack.worker_logs()                                      # fetched again before giving up
    output.write_bytes(good)
    done = kept.refetch(stack.app.config, job_id)
    assert done["outputs"] >= 1 and (workdir / "sleeper.txt").read_bytes() == good, done
    assert not rundir.exists()                              # removed only once every output came back verified


def test_an_app_killed_by_a_signal_on_stage_is_still_a_signal_to_slurm(stage_stack):
    stack, relay = stage_stack
    relay.arm()
    job_id = submit(stack, "sleeper_128m", backend=RELAYED, seconds=0, **{"allocate-mb": 600})
    st = wait(stack, job_id)
    assert st["state"] == "FAILURE" and st["status"].startswith("out of memory"), explain(stack, job_id)
    assert slurm_record(stack, job_id, RELAYED)["job_state"] == "OUT_OF_MEMORY"
