"""Slurm backend end to end: API → real Celery workers → slurmrestd → a real one-node Slurm cluster (22.05): sfinder
against a local run, exit codes, cancel (ours and someone else's), the time limit, refusals, arguments that must
arrive verbatim, staged working directories, outages of slurmrestd and of slurmctld, and twenty jobs at once on one
node."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from datetime import datetime
from pathlib import Path

import pytest

from caesar_rest.db import session_scope
from caesar_rest.models import Job
from workers.backends.base import (
    CANCELLED,
    EXITED,
    FAILED,
    LOST,
    QUEUED,
    RUNNING,
    BackendNotConfigured,
    BackendUnavailable,
    JobSpec,
)
from workers.backends.slurm import CANCEL_MARK, SlurmBackend, job_script, job_status

from ..apps.fitsgen import default_sources, make_image
from ..support import API, REPO, client_status, full_health, job_processes, upload, wait_state, wait_until
from .slurm_fixtures import UNREACHABLE_TIMEOUT, SlurmStack, slurm_script

# Slurm schedules every 2 s here; other suites share the 2 cores.
JOB_TIMEOUT = 180
# Metacharacters of sh, quotes of both kinds, a newline, and Slurm's own %-patterns: all must arrive verbatim.
NASTY = ("""a\\b \\" \\\\ \t  b 'c' "d" ''e'' ""f"" $HOME ${PATH} `id` $(id) %j %u %% ; | & > < * ? ~ \\ # ! ü"""
         "\nsecond line")


def submit(stack: SlurmStack, app: str, backend: str | None = "slurm", options: dict | None = None,
           **inputs) -> str:
    body: dict = {"app": app, "job_inputs": inputs}
    if backend:
        body["backend"] = backend
    if options is not None:
        body["backend_options"] = options
    r = stack.client.post(f"{API}/job", json=body)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def wait(stack: SlurmStack, job_id: str, states=None, timeout: float = JOB_TIMEOUT) -> dict:
    kwargs = {} if states is None else {"states": states}
    return wait_state(client_status(stack.client), job_id, timeout=timeout, **kwargs)


def members(stack: SlurmStack, job_id: str) -> dict[str, bytes]:
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


def metadata(stack: SlurmStack, job_id: str) -> dict:
    return stack.client.get(f"{API}/job/{job_id}/metadata").get_json()


def logs(stack: SlurmStack, job_id: str) -> dict:
    return stack.client.get(f"{API}/job/{job_id}/logs").get_json()


def explain(stack: SlurmStack, job_id: str) -> tuple:
    return client_status(stack.client)(job_id), logs(stack, job_id), stack.worker_logs()[-3000:]


def slurm_record(stack: SlurmStack, job_id: str, backend: str = "slurm") -> dict:
    """Slurm's record of the job (GET /job/{id} through the backend's own client)."""
    handle = metadata(stack, job_id)["handle"]
    record = stack.backend(backend).rest.job(int(handle.partition("|")[0]))
    assert record is not None, f"Slurm does not know job {handle}"
    return record


def slurm_id_of(stack: SlurmStack, job_id: str) -> int:
    handle = wait_until(lambda: metadata(stack, job_id).get("handle"), 60, f"job {job_id} submitted to Slurm")
    return int(handle.partition("|")[0])


def unreachable_since(stack: SlurmStack, job_id: str):
    with session_scope(stack.app.config["DATABASE_URL"]) as s:
        return s.get(Job, job_id).unreachable_since


# ---- the job script, without a cluster --------------------------------------------------------------------------
def test_the_job_script_execs_the_quoted_argv():
    assert job_script(["/bin/echo", "a b", "it's", "$(id)"]).splitlines()[-1] == \
        """exec /bin/echo 'a b' 'it'"'"'s' '$(id)'"""
    with pytest.raises(Exception, match="NUL"):
        job_script(["/bin/echo", "a\0b"])


def record(state: str, **fields) -> dict:
    return {"job_id": 42, "job_state": state, "state_reason": "None", "exit_code": 0, "partition": "debug",
            "batch_host": "vm", "comment": "caesar-rest job x", "user_name": "caesarjob", "time_limit": 2, **fields}


# Every state as slurmrestd 22.05 words it: the ends a one-node test cluster cannot produce (a failed or preempted
# node, a deadline) are checked here only; the others are also produced for real below.
@pytest.mark.parametrize("slurm, fields, state, exit_code, words", [
    ("PENDING", {"state_reason": "Resources"}, QUEUED, None, "Waiting in Slurm as job 42 (partition debug): Resources"),
    ("CONFIGURING", {}, QUEUED, None, "Waiting in Slurm"),
    ("RUNNING", {}, RUNNING, None, ""),
    ("COMPLETING", {}, RUNNING, None, ""),
    ("COMPLETED", {}, EXITED, 0, ""),
    ("FAILED", {"exit_code": 3 << 8, "state_reason": "NonZeroExitCode"}, EXITED, 3, ""),
    ("FAILED", {"exit_code": 9}, EXITED, -9, ""),
    ("FAILED", {"state_reason": "JobLaunchFailure"}, FAILED, None, "Slurm failed job 42: JobLaunchFailure"),
    ("TIMEOUT", {}, FAILED, None, "time limit of 2 min (TIMEOUT)"),
    ("CANCELLED", {"comment": "caesar-rest job x" + CANCEL_MARK}, CANCELLED, None, "Job canceled by user"),
    ("CANCELLED", {}, FAILED, None, "cancelled outside caesar-rest (by its Slurm user 'caesarjob'"),
    ("OUT_OF_MEMORY", {"memory_per_node": 100}, FAILED, None, "killed job 42 past its memory limit of 100 MB"),
    ("NODE_FAIL", {}, LOST, None, "its node failed (NODE_FAIL"),
    ("BOOT_FAIL", {}, LOST, None, "BOOT_FAIL"),
    ("PREEMPTED", {}, LOST, None, "it was preempted (PREEMPTED"),
    ("DEADLINE", {}, FAILED, None, "deadline"),
])
def test_slurm_states_map_per_the_table(slurm, fields, state, exit_code, words):
    status = job_status(record(slurm, **fields))
    assert (status.state, status.exit_code) == (state, exit_code), status
    assert words in status.reason, status
    assert status.oom_killed == (slurm == "OUT_OF_MEMORY")
    assert status.timed_out == (slurm == "TIMEOUT")


# ---- against the cluster ------------------------------------------------------------------------------------------
def test_sfinder_gives_the_catalogue_of_a_local_run(slurm_stack, tmp_path):
    stack = slurm_stack
    make_image(tmp_path / "field.fits", sources=default_sources())
    f = upload(stack.client, (tmp_path / "field.fits").read_bytes(), "field.fits")
    slurm_job = submit(stack, "sfinder", inputfile=f["uuid"], deblend=True)
    local_job = submit(stack, "sfinder", backend="local", inputfile=f["uuid"], deblend=True)
    st = wait(stack, slurm_job)
    assert st["state"] == "SUCCESS", explain(stack, slurm_job)
    assert wait(stack, local_job)["state"] == "SUCCESS", explain(stack, local_job)
    remote, local = members(stack, slurm_job), members(stack, local_job)
    assert {"field_catalog.csv", "field_sources.reg", "field_preview.png", "stdout.log", "stderr.log",
            "caesar_job.json"} <= set(remote), sorted(remote)
    assert remote["field_catalog.csv"] == local["field_catalog.csv"]
    assert len(remote["field_catalog.csv"].decode().strip().splitlines()) >= 1 + len(default_sources())
    assert "inputs/field.fits" not in remote       # inputs stay out of the tarball, as in a local run
    # Slurm's record: our job id in its name and comment, the app's resources, run as the job user, not root
    record = slurm_record(stack, slurm_job)
    assert record["job_state"] == "COMPLETED" and record["user_name"] == stack.cluster["CAESAR_TEST_SLURM_USER"]
    assert slurm_job in record["name"] and slurm_job in record["comment"], record
    assert record["partition"] == "debug" and record["memory_per_node"] == 4096 and record["cpus"] == 1, record
    assert record["time_limit"] == 61, record      # 3600 s + the 60 s margin, in minutes


def test_nonzero_exit_is_a_failure_with_its_status_and_last_stderr_line(slurm_stack):
    stack = slurm_stack
    job_id = submit(stack, "sleeper", seconds=0, **{"exit-code": 3})
    st = wait(stack, job_id)
    assert st["state"] == "FAILURE" and st["exit_status"] == 3, explain(stack, job_id)
    assert "exited with status 3" in st["status"] and "exiting with status 3" in st["status"], st
    assert slurm_record(stack, job_id)["job_state"] == "FAILED"


def test_logs_while_running_then_cancel_leaves_no_process_on_the_node(slurm_stack):
    stack = slurm_stack
    job_id = submit(stack, "sleeper", seconds=300, message="cancel me")
    wait(stack, job_id, ["RUNNING"])
    wait_until(lambda: logs(stack, job_id)["stdout"].startswith("cancel me"), 60, "the job's stdout while it runs")
    assert wait_until(lambda: job_processes(job_id), 30, "the job's processes on the node")
    r = stack.client.post(f"{API}/job/{job_id}/cancel")
    assert r.status_code == 200, r.get_json()
    st = wait(stack, job_id, timeout=60)
    assert st["state"] == "CANCELED" and st["status"] == "Job canceled by user", st
    wait_until(lambda: not job_processes(job_id), 30, "the cancelled job's processes gone")
    record = wait_until(lambda: (r := slurm_record(stack, job_id))["job_state"] != "COMPLETING" and r, 30,
                        "Slurm done with the cancelled job")
    assert record["job_state"] == "CANCELLED" and record["comment"].endswith(CANCEL_MARK), record


def test_a_cancel_outside_the_service_is_a_failure_naming_it(slurm_stack):
    stack = slurm_stack
    job_id = submit(stack, "sleeper", seconds=300)
    wait(stack, job_id, ["RUNNING"])
    stack.backend().rest.cancel(slurm_id_of(stack, job_id))       # as scancel would, without our mark
    st = wait(stack, job_id, timeout=60)
    assert st["state"] == "FAILURE", st
    assert "cancelled outside caesar-rest" in st["status"] and "caesarjob" in st["status"], st


def test_the_time_limit_ends_the_job_timed_out(slurm_stack):
    stack = slurm_stack
    job_id = submit(stack, "sleeper_5s", seconds=300, message="too slow")
    st = wait(stack, job_id)
    assert st["state"] == "TIMED-OUT", explain(stack, job_id)
    assert "time limit of 5 s" in st["status"], st
    wait_until(lambda: not job_processes(job_id), 30, "the stopped job's processes gone")
    record = wait_until(lambda: (r := slurm_record(stack, job_id))["job_state"] != "COMPLETING" and r, 30,
                        "Slurm done with the stopped job")
    assert record["time_limit"] == 2 and record["job_state"] == "CANCELLED", record    # Slurm's: a backstop


def test_memory_past_the_jobs_limit_is_a_failure_out_of_memory(slurm_stack):
    stack = slurm_stack
    job_id = submit(stack, "sleeper_128m", seconds=0, **{"allocate-mb": 600})
    st = wait(stack, job_id)
    assert st["state"] == "FAILURE", explain(stack, job_id)
    assert st["status"].startswith("out of memory: the kernel killed job") and "limit of 128 MB" in st["status"], st
    assert slurm_record(stack, job_id)["job_state"] == "OUT_OF_MEMORY"


def test_slurms_own_time_limit_ends_the_job_timed_out_with_slurms_reason(slurm_stack):
    stack = slurm_stack
    job_id = submit(stack, "sleeper_2m", backend="slurm_tight", seconds=300)   # Slurm's limit 1 min, the app's 2
    st = wait(stack, job_id, timeout=JOB_TIMEOUT + 60)
    assert st["state"] == "TIMED-OUT", explain(stack, job_id)
    assert "Slurm stopped job" in st["status"] and "time limit of 1 min (TIMEOUT)" in st["status"], st
    assert slurm_record(stack, job_id, "slurm_tight")["job_state"] == "TIMEOUT"
    wait_until(lambda: not job_processes(job_id), 30, "the timed-out job's processes gone")


def test_a_partition_slurm_does_not_have_is_aborted_with_slurms_message(slurm_stack):
    stack = slurm_stack
    job_id = submit(stack, "sleeper", options={"partition": "nosuch"}, seconds=0)
    st = wait(stack, job_id)
    assert st["state"] == "ABORTED", st
    assert "Slurm refused the job: Invalid partition name specified" in st["status"], st


def test_more_memory_than_any_node_has_is_aborted_with_slurms_message(slurm_stack):
    stack = slurm_stack
    job_id = submit(stack, "sleeper_huge", seconds=0)
    st = wait(stack, job_id)
    assert st["state"] == "ABORTED", st
    assert "Slurm refused the job: Requested node configuration is not available" in st["status"], st


def test_options_outside_what_the_settings_allow_are_a_400_naming_them(slurm_stack):
    stack = slurm_stack
    for options, named in (({"qos": "high"}, "'qos' may not be chosen"), ({"partition": "long"}, "'partition' may be"),
                           ({"partition": 3}, "'partition' must be"), ({"nodes": "x"}, "no option 'nodes'")):
        r = stack.client.post(f"{API}/job", json={"app": "sleeper", "backend": "slurm", "job_inputs": {},
                                                  "backend_options": options})
        assert r.status_code == 400 and named in r.get_json()["message"], (options, r.get_json())


def test_shell_metacharacters_in_every_option_type_arrive_verbatim(slurm_stack, tmp_path):
    stack = slurm_stack
    pwned = tmp_path / "pwned"
    nasty = f"{NASTY} $(touch {pwned}1) `touch {pwned}2`; touch {pwned}3"
    name = "in put;$(id) 'q'.txt"
    f = upload(stack.client, b"x\n", name)
    choice = "a;b|c `id` $(id) 'q' \"dq\""
    job_id = submit(stack, "argv", text=nasty, equals=nasty, last=nasty, choice=choice, number=-7, ratio=0.5,
                    flag=True, inputfile=f["uuid"])
    st = wait(stack, job_id)
    assert st["state"] == "SUCCESS", explain(stack, job_id)
    argv = members(stack, job_id)["stdout.log"].split(b"\0")[:-1]
    assert [a.decode() for a in argv] == ["--text", nasty, f"--equals={nasty}", nasty, "--choice", choice,
                                          "--number", "-7", "--ratio", "0.5", "--flag", "--inputfile",
                                          f"inputs/{name}"], argv
    assert [a.decode() for a in argv] == metadata(stack, job_id)["argv"][2:]
    assert not list(tmp_path.glob("pwned*")), "a shell interpreted an option value"


def test_a_staged_job_runs_in_scratch_and_its_outputs_come_back(slurm_stack):
    stack = slurm_stack
    f = upload(stack.client, b"staged to scratch\n" * 100, "s.txt")
    job_id = submit(stack, "checksum", backend="slurm_stage", inputfile=f["uuid"])
    st = wait(stack, job_id)
    assert st["state"] == "SUCCESS", explain(stack, job_id)
    out = members(stack, job_id)
    assert f["sha256"] in out["checksum.txt"].decode() and "stdout.log" in out, sorted(out)
    record = slurm_record(stack, job_id, "slurm_stage")
    ran_in = Path(record["current_working_directory"])
    assert ran_in.parent == stack.root / "scratch", ran_in
    wait_until(lambda: not ran_in.exists(), 30, "the scratch directory's removal")   # after the end is recorded


def test_a_staged_jobs_symlink_to_a_file_of_the_worker_is_not_copied_back(slurm_stack, tmp_path):
    stack = slurm_stack
    secret = tmp_path / "secret.txt"
    secret.write_text("the worker's own\n")
    secret.chmod(0o600)         # root's: the job's account cannot read it, the worker copying back could
    job_id = submit(stack, "linker", backend="slurm_stage", target=str(secret), name="leak.txt")
    st = wait(stack, job_id)
    assert st["state"] == "SUCCESS", explain(stack, job_id)
    out = members(stack, job_id)
    assert "leak.txt" not in out and not any(b"the worker's own" in data for data in out.values()), sorted(out)


def test_a_token_given_in_the_settings_serves_instead_of_the_key(slurm_stack):
    stack = slurm_stack
    made = subprocess.run(["scontrol", "token", f"username={stack.cluster['CAESAR_TEST_SLURM_USER']}",
                           "lifespan=600"], capture_output=True, text=True, check=True, timeout=60,
                          env={**os.environ, "SLURM_CONF": stack.cluster["SLURM_CONF"]})
    options = {**stack.app.config["BACKENDS"]["slurm"], "token": made.stdout.strip().partition("=")[2]}
    del options["jwt_key"]
    backend = SlurmBackend(stack.app.config, options)
    assert backend.health()["partition_state"] == "UP"
    workdir = stack.root / "token-job"       # where the job's account reaches
    workdir.mkdir()
    handle = backend.submit(JobSpec(job_id="token-job", owner="o", app="argv", argv=["/bin/true"], workdir=workdir,
                                    time_limit_s=60, memory_mb=64))
    status = wait_until(lambda: (s := backend.poll(handle)).state == EXITED and s, 60, "the job made with a token")
    assert status.exit_code == 0, status


def test_a_wrong_key_api_version_or_user_is_refused(slurm_stack, tmp_path):
    stack = slurm_stack
    key = tmp_path / "wrong.key"
    key.write_bytes(os.urandom(32))
    wrong = SlurmBackend(stack.app.config, {**stack.app.config["BACKENDS"]["slurm"], "jwt_key": str(key)})
    # slurmrestd 22.05 answers a token the controller refuses with error -1, as it answers for a controller that
    # is down: it counts as unreachable (REMOTE_UNREACHABLE_TIMEOUT), and says Slurm's words.
    with pytest.raises(BackendUnavailable, match=r"\[Slurm error -1\]"):
        wrong.health()
    other_api = SlurmBackend(stack.app.config, {**stack.app.config["BACKENDS"]["slurm"], "api_version": "v0.0.39"})
    with pytest.raises(BackendNotConfigured, match=r"does not serve /ping of API v0\.0\.39 \(HTTP 404\)"):
        other_api.health()
    for user in ("root", ""):
        with pytest.raises(BackendNotConfigured, match=r"root|'user'"):
            SlurmBackend(stack.app.config, {**stack.app.config["BACKENDS"]["slurm"], "user": user})


def test_a_job_slurm_does_not_know_is_lost(slurm_stack):
    status = slurm_stack.backend().poll("98765432")
    assert status.state == LOST and "Slurm no longer knows job 98765432" in status.reason


def test_health_pings_the_controller_and_reads_the_partition(slurm_stack):
    stack = slurm_stack
    assert stack.client.get("/health").get_json()["checks"]["backends"]["slurm"]["status"] == "ok"
    detail = full_health(stack.client)["backends"]["slurm"]["detail"]
    assert detail["partition"] == "debug" and detail["partition_state"] == "UP" and detail["controller"], detail


def test_slurmrestd_stopped_mid_job_then_started_again_the_job_succeeds(slurm_stack, outage_rest):
    stack = slurm_stack
    job_id = submit(stack, "sleeper", backend="slurm_outage", seconds=8, message="through the outage")
    wait(stack, job_id, ["RUNNING"])
    slurm_script("stop-rest", outage_rest)
    wait_until(lambda: unreachable_since(stack, job_id), 30, "a poll that found slurmrestd away")
    slurm_script("start", outage_rest)
    st = wait(stack, job_id)
    assert st["state"] == "SUCCESS", explain(stack, job_id)
    assert members(stack, job_id)["sleeper.txt"] == b"through the outage\n"


def test_slurmrestd_away_longer_than_the_timeout_fails_the_job_with_the_reason(slurm_stack, outage_rest):
    stack = slurm_stack
    job_id = submit(stack, "sleeper", backend="slurm_outage", seconds=300)
    wait(stack, job_id, ["RUNNING"])
    slurm_id = slurm_id_of(stack, job_id)
    try:
        slurm_script("stop-rest", outage_rest)
        st = wait(stack, job_id, timeout=UNREACHABLE_TIMEOUT + 60)
        assert st["state"] == "FAILURE", st
        down = re.search(r"unreachable for (\d+) s \(slurmrestd at http://127\.0\.0\.1:\d+ unreachable", st["status"])
        assert down and int(down.group(1)) >= UNREACHABLE_TIMEOUT, st   # the timeout was waited out, not skipped
        health = full_health(stack.client)["backends"]["slurm_outage"]
        assert health["status"] == "down" and "unreachable" in health["error"], health
    finally:
        stack.backend().rest.cancel(slurm_id)      # the job itself still ran on the cluster


def test_slurmctld_stopped_mid_job_then_started_again_the_job_succeeds(slurm_stack):
    stack = slurm_stack
    job_id = submit(stack, "sleeper", seconds=8, message="the controller came back")
    wait(stack, job_id, ["RUNNING"])
    try:
        slurm_script("stop-controller")
        wait_until(lambda: unreachable_since(stack, job_id), 60, "a poll that found the controller away")
    finally:
        slurm_script("start")
    st = wait(stack, job_id)
    assert st["state"] == "SUCCESS", explain(stack, job_id)
    assert members(stack, job_id)["sleeper.txt"] == b"the controller came back\n"


def test_twenty_jobs_on_one_node_followed_by_two_worker_processes(slurm_stack):
    stack = slurm_stack
    if len(stack.workers) < 2:
        stack.start_worker()
    t0 = time.time()
    jobs = [submit(stack, "sleeper", seconds=1, message=f"job {i}") for i in range(20)]
    # The node has 2 CPUs: most jobs wait in Slurm's queue, and the poll says why.
    waiting = wait_until(lambda: [s for s in (stack.backend().poll(h) for h in
                                              filter(None, (metadata(stack, j)["handle"] for j in jobs)))
                                  if s.state == QUEUED and ("Resources" in s.reason or "Priority" in s.reason)],
                         60, "a job waiting in Slurm for resources")
    assert "Waiting in Slurm as job" in waiting[0].reason, waiting[0]
    # ... and so does the job's own status line while it is STARTED.
    status_lines = lambda: [st["status"] for st in (client_status(stack.client)(j) for j in jobs)
                            if st["state"] == "STARTED" and "Waiting in Slurm as job" in st["status"]]
    assert wait_until(status_lines, 60, "a waiting job whose status line gives Slurm's reason")
    states = [wait(stack, job, timeout=300) for job in jobs]
    assert [s["state"] for s in states] == ["SUCCESS"] * 20, [explain(stack, j)
                                                              for j, s in zip(jobs, states, strict=True)
                                                              if s["state"] != "SUCCESS"][:2]
    for i, job in enumerate(jobs):
        assert members(stack, job)["sleeper.txt"] == f"job {i}\n".encode()
    # Both worker processes followed jobs: each logged polls.
    assert all("caesar.poll_job[" in w.log() for w in stack.workers), stack.worker_logs()
    ended = [max(datetime.fromisoformat(e["at"]) for e in metadata(stack, j)["events"] if e["state"] == "SUCCESS")
             for j in jobs]
    print(f"\n20 sleepers of 1 s on a one-node, 2-CPU Slurm cluster, 2 worker processes: all SUCCESS after "
          f"{time.time() - t0:.1f} s, the last ended {(max(ended) - min(ended)).total_seconds():.1f} s after the first")


def test_the_slurm_bench_runs_and_gives_both_figures(slurm_cluster, tmp_path):
    """`python -m bench.slurm` (not one of `make bench`'s phases: it needs this cluster) on two jobs of each kind."""
    out = tmp_path / "slurm.json"
    done = subprocess.run([sys.executable, "-m", "bench.slurm", "--jobs", "2", "--poll-interval", "0.5", "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    figures = json.loads(out.read_text())["figures"]
    for key in ("slurm_noop_p50", "slurm_noop_p95"):
        assert figures[key]["value"] > 0 and figures[key]["baseline"] > 0, figures[key]
    assert figures["slurm_noop_p50"]["details"]["remote_poll_interval"] == 0.5
