"""HTCondor backend end to end: API → real Celery worker → a real personal HTCondor pool, in each transfer mode;
success, non-zero exit, hold, cancel, a pool stopped mid-job, and arguments that must arrive verbatim."""
from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest

from workers.backends.base import LOST
from workers.backends.htcondor import condor_arguments, condor_environment

from ..apps.fitsgen import default_sources, make_image
from ..support import API, client_status, full_health, upload, wait_state, wait_until
from .htcondor_fixtures import CondorStack, htcondor_script

# A condor job takes a few seconds to be matched and started; the machine may be busy with other tests.
JOB_TIMEOUT = 180
# Metacharacters of sh, quotes of both kinds and the submit language's own quoting: all must arrive verbatim.
NASTY = ("""a\\b \\" \\\\ \t  b 'c' "d" ''e'' ""f"" $HOME ${PATH} `id` $(id) $$(Name) """
         """$ENV(HOME) $(DOLLAR) ; | & > < * ? ~ \\ # % ! ü""")


def submit(stack: CondorStack, app: str, backend: str = "condor", **inputs) -> str:
    r = stack.client.post(f"{API}/job", json={"app": app, "job_inputs": inputs, "backend": backend})
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def wait(stack: CondorStack, job_id: str, states=None, timeout: float = JOB_TIMEOUT) -> dict:
    kwargs = {} if states is None else {"states": states}
    return wait_state(client_status(stack.client), job_id, timeout=timeout, **kwargs)


def members(stack: CondorStack, job_id: str) -> dict[str, bytes]:
    """The job's output tarball: member path below the top directory → content (b'' for directories)."""
    r = stack.client.get(f"{API}/job/{job_id}/output")
    assert r.status_code == 200, r.get_json()
    out = {}
    with tarfile.open(fileobj=io.BytesIO(r.data), mode="r:gz") as tar:
        for info in tar.getmembers():
            rel = "/".join(Path(info.name).parts[1:])
            if rel:
                out[rel] = (tar.extractfile(info) or io.BytesIO()).read()
    return out


def in_pool(stack: CondorStack, job_id: str, backend: str = "condor") -> tuple[list, list]:
    """The job's ads in the schedd's queue and history, found by our custom attribute CaesarJobId."""
    condor = stack.backend(backend)
    schedd, _ = condor._schedd(None)
    constraint = f'CaesarJobId == "{job_id}"'
    projection = ["ClusterId", "JobStatus", "AccountingGroup", "AcctGroupUser", "Owner", "CaesarApp", "Cmd",
                  "RequestCpus", "RequestMemory", "RequestDisk", "ShouldTransferFiles"]
    return schedd.query(constraint, projection), schedd.history(constraint, projection)


def logs(stack: CondorStack, job_id: str) -> str:
    return stack.client.get(f"{API}/job/{job_id}/logs").get_data(as_text=True)


# ---- the submit language, without a pool ---------------------------------------------------------------------
def test_arguments_use_the_new_syntax_quoting():
    assert condor_arguments(["a b", "it's", 'say "hi"', ""]) == """'a b' 'it''s' 'say "hi"' ''"""
    assert condor_arguments(["$$(Name)", "$$$(x)", "$(x)"]) == "'$$(DOLLARDOLLAR)(Name)' '$$$(x)' '$(x)'"
    assert condor_environment({"A": "x y"}) == "'A=x y'"
    with pytest.raises(Exception, match="newline"):
        condor_arguments(["two\nlines"])


# ---- against the pool ------------------------------------------------------------------------------------------
def test_checksum_spooled_succeeds_with_the_tarball_of_a_local_run(condor_stack):
    stack = condor_stack
    f = upload(stack.client, b"caesar on condor\n" * 1000, "data.txt")
    condor_id = submit(stack, "checksum", inputfile=f["uuid"], algorithm="md5")
    local_id = submit(stack, "checksum", backend="local", inputfile=f["uuid"], algorithm="md5")
    st = wait(stack, condor_id)
    assert st["state"] == "SUCCESS", (st, logs(stack, condor_id), stack.worker.log()[-3000:])
    assert st["exit_status"] == 0
    assert wait(stack, local_id)["state"] == "SUCCESS"
    remote, local = members(stack, condor_id), members(stack, local_id)
    assert set(remote) == set(local), (sorted(remote), sorted(local))
    assert remote["checksum.txt"] == local["checksum.txt"]
    assert f["sha256"] not in remote["checksum.txt"].decode()      # md5 was asked for, and it arrived
    assert remote["stdout.log"] == local["stdout.log"]
    meta = stack.client.get(f"{API}/job/{condor_id}/metadata").get_json()
    assert meta["backend"] == "condor" and meta["exit_status"] == 0
    # the pool's record: our job id, the user's accounting group, the requested resources
    # the backend's copy goes after the end is recorded: waited for
    wait_until(lambda: in_pool(stack, condor_id)[0] == [], 60, "the job to leave the queue")
    queue, history = in_pool(stack, condor_id)
    assert queue == [] and len(history) == 1, (queue, history)
    ad = history[0]
    assert ad["AccountingGroup"] == "caesar.anonymous" and ad["AcctGroupUser"] == "anonymous"
    assert ad["CaesarApp"] == "checksum" and ad["Cmd"].endswith("/caesar-checksum")
    assert ad["RequestCpus"] == 1 and ad["RequestMemory"] == 1024 and ad["RequestDisk"] >= 1024 * 1024


def test_arguments_with_shell_metacharacters_arrive_verbatim(condor_stack):
    stack = condor_stack
    job_id = submit(stack, "sleeper", seconds=0, message=NASTY)
    st = wait(stack, job_id)
    assert st["state"] == "SUCCESS", (st, logs(stack, job_id))
    out = members(stack, job_id)
    assert out["sleeper.txt"].decode() == NASTY + "\n"
    assert out["stdout.log"].decode().splitlines()[0] == NASTY


def test_nonzero_exit_is_a_failure_with_its_status_and_stderr(condor_stack):
    stack = condor_stack
    job_id = submit(stack, "sleeper", seconds=0, **{"exit-code": 3})
    st = wait(stack, job_id)
    assert st["state"] == "FAILURE" and st["exit_status"] == 3, st
    assert "exited with status 3" in st["status"] and "exiting with status 3" in st["status"], st
    assert "exiting with status 3" in members(stack, job_id)["stderr.log"].decode()


def test_held_job_fails_with_the_hold_reason_and_leaves_the_queue(condor_stack):
    stack = condor_stack
    job_id = submit(stack, "missing")
    st = wait(stack, job_id)
    assert st["state"] == "FAILURE", st
    assert "held" in st["status"] and "/nonexistent/caesar-missing" in st["status"], st
    # the backend's copy goes after the end is recorded: waited for
    wait_until(lambda: in_pool(stack, job_id)[0] == [], 60, "the held job to leave the queue")
    queue, history = in_pool(stack, job_id)
    assert queue == [] and len(history) == 1, (queue, history)


def test_cancel_removes_the_job_from_the_pool(condor_stack):
    stack = condor_stack
    job_id = submit(stack, "sleeper", seconds=300)
    wait(stack, job_id, ["RUNNING"])
    r = stack.client.post(f"{API}/job/{job_id}/cancel")
    assert r.status_code == 200, r.get_json()
    st = wait(stack, job_id, timeout=60)
    assert st["state"] == "CANCELED" and st["status"] == "Job canceled by user", st
    # The pool's copy goes after the end is recorded (nothing is removed before the outputs are safe): wait for it.
    wait_until(lambda: in_pool(stack, job_id)[0] == [], 60, "the canceled job to leave the queue")
    queue, history = in_pool(stack, job_id)
    assert queue == [] and [ad["JobStatus"] for ad in history] == [3], (queue, history)


def test_sfinder_on_a_shared_filesystem(condor_stack, tmp_path):
    stack = condor_stack
    make_image(tmp_path / "field.fits", sources=default_sources())
    f = upload(stack.client, (tmp_path / "field.fits").read_bytes(), "field.fits")
    job_id = submit(stack, "sfinder", backend="condor_shared", inputfile=f["uuid"], deblend=True)
    st = wait(stack, job_id)
    assert st["state"] == "SUCCESS", (st, logs(stack, job_id))
    out = members(stack, job_id)
    assert {"field_catalog.csv", "field_sources.reg", "field_preview.png", "stdout.log", "stderr.log",
            "caesar_job.json"} <= set(out), sorted(out)
    assert len(out["field_catalog.csv"].decode().strip().splitlines()) >= 1 + len(default_sources())
    assert "inputs/field.fits" not in out       # inputs stay out of the tarball, as in a local run
    _queue, history = in_pool(stack, job_id, "condor_shared")
    assert history[0]["ShouldTransferFiles"] == "NO"


def test_checksum_with_file_transfer_from_the_job_directory(condor_stack):
    stack = condor_stack
    f = upload(stack.client, b"transferred\n", "t.txt")
    job_id = submit(stack, "checksum", backend="condor_files", inputfile=f["uuid"])
    st = wait(stack, job_id)
    assert st["state"] == "SUCCESS", (st, logs(stack, job_id))
    assert f["sha256"] in members(stack, job_id)["checksum.txt"].decode()
    _queue, history = in_pool(stack, job_id, "condor_files")
    assert history[0]["ShouldTransferFiles"] == "YES"


def test_a_job_in_neither_queue_nor_history_is_lost(condor_stack):
    status = condor_stack.backend().poll("987654.0")
    assert status.state == LOST and "neither the queue nor the history" in status.reason


def test_pool_stopped_mid_job_fails_after_the_unreachable_timeout(condor_stack, outage_pool):
    stack = condor_stack
    job_id = submit(stack, "sleeper", backend="condor_outage", seconds=300)
    wait(stack, job_id, ["RUNNING"])
    health = full_health(stack.client)["backends"]["condor_outage"]
    assert health["status"] == "ok" and health["detail"]["schedd"], health
    htcondor_script("stop", {key: outage_pool[key] for key in ("CONDOR_INSTANCE", "CONDOR_PORT")}, timeout=120)
    st = wait(stack, job_id, timeout=90)
    assert st["state"] == "FAILURE", st
    down = re.search(r"unreachable for (\d+) s \(HTCondor unreachable while \w+", st["status"])
    assert down and "collector 127.0.0.1:" in st["status"], st
    assert int(down.group(1)) >= 4, st      # REMOTE_UNREACHABLE_TIMEOUT was waited out, not skipped
    response = stack.client.get("/health")
    assert response.get_json()["checks"]["backends"]["condor_outage"]["status"] == "down"
    health = full_health(stack.client)["backends"]["condor_outage"]
    assert health["status"] == "down" and "HTCondor unreachable" in health["error"], health
    assert response.get_json()["status"] == "degraded"      # an optional backend down: the service still serves
