"""HTCondor outputs verified by size and sha256 (issue 15): the execute node seals what the job leaves
(workers/backends/condor_seal.py, the job's PostCmd), and the worker holds what it retrieved to that seal before
the schedd's copy is removed. Against the real pool: a spooled output altered on the schedd is refused naming the
file, with the copy still in the queue; once it is whole again the fetch succeeds and the seal leaves no trace."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from workers.backends import condor_seal
from workers.backends.base import EXITED, BackendUnavailable, JobSpec

from ..support import wait_until
from .htcondor_fixtures import CondorStack


def test_the_seal_covers_the_jobs_files_and_names_every_difference(tmp_path):
    job = tmp_path / "sandbox"
    (job / "inputs").mkdir(parents=True)
    (job / "inputs" / "big.fits").write_bytes(b"x" * 10)          # staged by us: left out
    (job / "out").mkdir()
    (job / "out" / "cat.txt").write_text("catalogue\n")
    (job / "result.json").write_text("{}")
    (job / "_condor_stdout").write_text("hello\n")                # sealed as the name the worker gives it
    (job / ".job.ad").write_text("ad")                            # HTCondor's own: left out
    (job / "link").symlink_to("/etc/passwd")                      # never followed
    files = condor_seal.seal(job, "condor_seal.py")
    assert sorted(files) == ["out/cat.txt", "result.json", "stdout.log"]
    assert files["out/cat.txt"] == {"size": 10, "sha256": condor_seal.sha256_of(job / "out" / "cat.txt")}

    dest = tmp_path / "dest"
    (dest / "out").mkdir(parents=True)
    assert condor_seal.verify(dest) == [(f"no {condor_seal.MANIFEST} arrived: the job's post step did not run, "
                                         "or its output was lost")]
    (dest / condor_seal.MANIFEST).write_text(json.dumps({"files": files}))
    (dest / "out" / "cat.txt").write_text("catalogue\n")
    (dest / "result.json").write_text("{ }")                      # same size would be caught by the digest; this
    assert condor_seal.verify(dest) == ["result.json has 3 bytes, not 2", "stdout.log is missing"]
    (dest / "result.json").write_text("[]")
    (dest / "stdout.log").write_text("hello\n")
    assert condor_seal.verify(dest) == [(f"result.json has sha256 {condor_seal.sha256_of(dest / 'result.json')}, "
                                         f"not {files['result.json']['sha256']}")]
    (dest / "result.json").write_text("{}")
    assert condor_seal.verify(dest) == []


def test_an_output_altered_on_the_schedd_is_refused_and_the_copy_kept(condor_stack: CondorStack, condor_pool,
                                                                       tmp_path):
    backend = condor_stack.backend("condor")
    workdir = Path(condor_stack.settings["ROOT"]) / "seal-job"
    workdir.mkdir(parents=True)
    spec = JobSpec(job_id="seal-test-" + str(int(time.time())), owner="anonymous", app="sleeper",
                   argv=["caesar-sleeper", "--seconds", "0", "--message", "sealed output"], workdir=workdir)
    handle = backend.submit(spec)
    job, _ = backend._parse(handle)
    try:
        status = wait_until(lambda: (s := backend.poll(handle)).state == EXITED and s, 180, "the job's end")
        assert status.exit_code == 0
        schedd, _ = backend._schedd(None)
        iwd, = [ad["Iwd"] for ad in schedd.query(backend._constraint(job), ["Iwd"])]   # the spool, in the chroot
        spooled = Path(condor_pool["CAESAR_TEST_CONDOR_CHROOT"] + iwd) / "sleeper.txt"
        assert spooled.read_text() == "sealed output\n"
        spooled.write_text("sealed outpuT\n")                     # same size: only the sha256 can tell
        with pytest.raises(BackendUnavailable, match=r"sleeper.txt has sha256 [0-9a-f]{64}, not [0-9a-f]{64}"):
            backend.fetch_outputs(handle, workdir)
        assert schedd.query(backend._constraint(job), ["JobStatus"])       # the schedd's copy is still there
        spooled.write_text("sealed output\n")
        backend.fetch_outputs(handle, workdir)                    # retrieved again, whole this time
        assert (workdir / "sleeper.txt").read_text() == "sealed output\n"
        assert not (workdir / condor_seal.MANIFEST).exists()
        assert "condor_seal.py" not in {p.name for p in workdir.iterdir()}
    finally:
        backend.cleanup(handle)
