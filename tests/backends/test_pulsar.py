"""Pulsar backend end to end: API → real Celery worker (2 processes) → two real Galaxy Pulsar servers.

Success with the tarball of a local run, server choice per job and per app, non-zero exit, option values full of
shell metacharacters, cancel, time limit, a wrong token, 20 concurrent jobs, a server that restarts and forgets its
jobs, a server that stays away, and private tokens that never leak."""
from __future__ import annotations

import io
import json
import tarfile
import threading
import time
import traceback
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from workers.backends.base import RUNNING, BackendUnavailable
from workers.backends.pulsar import PulsarBackend

from ..apps.fitsgen import make_image
from ..support import (
    API,
    TERMINAL,
    client_status,
    free_port,
    full_health,
    job_processes,
    upload,
    wait_state,
    wait_until,
)
from .pulsar_fixtures import UNREACHABLE_TIMEOUT, PulsarStack

# Generous: other engineers' suites share these 2 cores.
JOB_TIMEOUT = 120


def submit(pulsar_stack: PulsarStack, app: str, backend: str | None = "pulsar", server: str | None = None,
           **inputs) -> str:
    body: dict = {"app": app, "job_inputs": inputs}
    if backend:
        body["backend"] = backend
    if server:
        body["backend_options"] = {"server": server}
    r = pulsar_stack.client.post(f"{API}/job", json=body)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def wait(pulsar_stack: PulsarStack, job_id: str, states=TERMINAL, timeout: float = JOB_TIMEOUT) -> dict:
    return wait_state(client_status(pulsar_stack.client), job_id, states=states, timeout=timeout)


def metadata(pulsar_stack: PulsarStack, job_id: str) -> dict:
    return pulsar_stack.client.get(f"{API}/job/{job_id}/metadata").get_json()


def logs(pulsar_stack: PulsarStack, job_id: str) -> dict:
    return pulsar_stack.client.get(f"{API}/job/{job_id}/logs").get_json()


def tarball(pulsar_stack: PulsarStack, job_id: str) -> dict[str, bytes | None]:
    """Member name below the job_<id>/ top → content (None for directories)."""
    r = pulsar_stack.client.get(f"{API}/job/{job_id}/output")
    assert r.status_code == 200, r.get_json()
    out: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(r.data), mode="r:gz") as tar:
        for info in tar.getmembers():
            rel = "/".join(Path(info.name).parts[1:])
            if rel:
                out[rel] = tar.extractfile(info).read() if info.isfile() else None
    return out


def explain(pulsar_stack: PulsarStack, job_id: str) -> str:
    return f"{metadata(pulsar_stack, job_id)}\n{logs(pulsar_stack, job_id)}\n{pulsar_stack.worker.log()[-4000:]}"


def pulsar_job(pulsar_stack: PulsarStack, job_id: str) -> tuple[str, str]:
    server, _, pulsar_id = metadata(pulsar_stack, job_id)["handle"].rpartition(":")
    return server, pulsar_id


def wait_running_on_pulsar(pulsar_stack: PulsarStack, job_id: str) -> tuple[str, str]:
    st = wait(pulsar_stack, job_id, states=("RUNNING", *TERMINAL))
    assert st["state"] == "RUNNING", explain(pulsar_stack, job_id)
    server, pulsar_id = pulsar_job(pulsar_stack, job_id)
    deadline = time.time() + 30
    while not job_processes(job_id) and time.time() < deadline:
        time.sleep(0.1)
    assert job_processes(job_id), "the app's process never started on the Pulsar server"
    return server, pulsar_id


# ---- options, without a job ----------------------------------------------------------------------------------
def test_unknown_server_is_rejected_naming_the_known_ones(pulsar_stack):
    r = pulsar_stack.client.post(f"{API}/job", json={"app": "sleeper", "job_inputs": {}, "backend": "pulsar",
                                              "backend_options": {"server": "nowhere"}})
    assert r.status_code == 400
    message = r.get_json()["message"]
    assert "nowhere" in message and "bad, p1, p2" in message
    r = pulsar_stack.client.post(f"{API}/job", json={"app": "sleeper", "job_inputs": {}, "backend": "pulsar",
                                              "backend_options": {"queue": "x"}})
    assert r.status_code == 400 and "server" in r.get_json()["message"]


class _Flaky(BaseHTTPRequestHandler):
    """Answers the first `failures` requests with `code`, then like Pulsar for a running job."""

    failures, code, seen = 0, 503, 0

    def do_GET(self) -> None:
        type(self).seen += 1
        if type(self).seen <= type(self).failures:
            self.send_response(type(self).code)
            self.end_headers()
            return
        body = json.dumps({"status": "running", "complete": "false"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("code,failures,retried", [(503, 2, True), (500, 1, False)])
def test_transient_http_errors_are_retried_within_one_call(code, failures, retried):
    _Flaky.code, _Flaky.failures, _Flaky.seen = code, failures, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = PulsarBackend({}, {"servers": {"s": {"url": f"http://127.0.0.1:{server.server_port}",
                                                      "private_token": "sekrit-token"}}, "backoff": 0.05})
        if retried:
            assert backend.poll("s:job").state == RUNNING
            assert _Flaky.seen == failures + 1
        else:
            with pytest.raises(BackendUnavailable, match="HTTP 500"):
                backend.poll("s:job")
            assert _Flaky.seen == 1            # Pulsar's own 500s are not retried
    finally:
        server.shutdown()


def test_an_unreachable_server_is_unavailable_and_the_error_chain_hides_the_token():
    backend = PulsarBackend({}, {"servers": {"s": {"url": f"http://127.0.0.1:{free_port()}",
                                                  "private_token": "sekrit-token"}}, "retries": 1, "backoff": 0.05})
    with pytest.raises(BackendUnavailable, match="cannot connect") as info:
        backend.poll("s:job")
    told = "".join(traceback.format_exception(info.value))
    assert "private_token=***" in told and "sekrit-token" not in told


# ---- jobs ------------------------------------------------------------------------------------------------------
def test_checksum_on_pulsar_gives_the_tarball_of_a_local_run(pulsar_stack):
    data = b"caesar on pulsar\n" * 50000
    f = upload(pulsar_stack.client, data, "data.txt")
    t0 = time.time()
    remote = submit(pulsar_stack, "checksum", inputfile=f["uuid"], algorithm="md5")
    local = submit(pulsar_stack, "checksum", backend="local", inputfile=f["uuid"], algorithm="md5")
    st = wait(pulsar_stack, remote)
    round_trip = time.time() - t0
    assert st["state"] == "SUCCESS", explain(pulsar_stack, remote)
    assert st["exit_status"] == 0
    assert wait(pulsar_stack, local)["state"] == "SUCCESS", explain(pulsar_stack, local)
    import hashlib
    expected = f"{hashlib.md5(data).hexdigest()}  data.txt\n".encode()
    remote_tar, local_tar = tarball(pulsar_stack, remote), tarball(pulsar_stack, local)
    assert remote_tar["checksum.txt"] == expected == local_tar["checksum.txt"]
    assert sorted(remote_tar) == sorted(local_tar)
    assert remote_tar["stdout.log"] == local_tar["stdout.log"] == b"md5 " + expected
    server, pulsar_id = pulsar_job(pulsar_stack, remote)
    assert server == "p1"
    wait_until(lambda: not pulsar_stack.servers["p1"].job_dir(pulsar_id).exists(), 30,
               "the remote job's removal")          # removed after the end is recorded: waited for
    print(f"\nchecksum (800 kB input) on Pulsar: submit → SUCCESS seen by the client in {round_trip:.2f} s")


def test_sfinder_on_server_p2_gives_the_tarball_and_catalogue_of_a_local_run(pulsar_stack, tmp_path):
    image = make_image(tmp_path / "field.fits")
    f = upload(pulsar_stack.client, image.read_bytes(), "field.fits")
    options = {"inputfile": f["uuid"], "seedthr": 5, "deblend": True}
    remote = submit(pulsar_stack, "sfinder", server="p2", **options)
    local = submit(pulsar_stack, "sfinder", backend="local", **options)
    assert wait(pulsar_stack, remote)["state"] == "SUCCESS", explain(pulsar_stack, remote)
    assert wait(pulsar_stack, local)["state"] == "SUCCESS", explain(pulsar_stack, local)
    assert pulsar_job(pulsar_stack, remote)[0] == "p2"
    remote_tar, local_tar = tarball(pulsar_stack, remote), tarball(pulsar_stack, local)
    assert sorted(remote_tar) == sorted(local_tar)
    assert {"field_catalog.csv", "field_sources.reg", "field_preview.png", "stdout.log", "stderr.log",
            "caesar_job.json"} <= set(remote_tar)
    assert remote_tar["field_catalog.csv"] == local_tar["field_catalog.csv"]
    assert remote_tar["field_sources.reg"] == local_tar["field_sources.reg"]
    assert not any(name.startswith("inputs") for name in remote_tar)


def test_app_yaml_sends_the_sleeper_to_its_server(pulsar_stack):
    job = submit(pulsar_stack, "sleeper_p2", backend=None, seconds=0.2, message="from the yaml")
    st = wait(pulsar_stack, job)
    assert st["state"] == "SUCCESS", explain(pulsar_stack, job)
    assert pulsar_job(pulsar_stack, job)[0] == "p2"
    out = tarball(pulsar_stack, job)
    assert out["sleeper.txt"] == b"from the yaml\n"
    assert logs(pulsar_stack, job)["stdout"].startswith("from the yaml\n")


def test_non_zero_exit_is_a_failure_with_the_status_and_the_last_stderr_line(pulsar_stack):
    job = submit(pulsar_stack, "sleeper", seconds=0, message="bye", **{"exit-code": 3})
    st = wait(pulsar_stack, job)
    assert st["state"] == "FAILURE", explain(pulsar_stack, job)
    assert st["exit_status"] == 3
    assert "status 3" in st["status"] and "exiting with status 3" in st["status"]
    assert tarball(pulsar_stack, job)["sleeper.txt"] == b"bye\n"


def test_shell_metacharacters_in_options_arrive_verbatim_and_run_nothing(pulsar_stack, tmp_path):
    m = tmp_path / "pwned"
    message = (f"$(touch {m}1); `touch {m}2` | touch {m}3 ; touch {m}4 && touch {m}5 || touch {m}6 & "
               f"> {m}7 'single' \"double\" \\ $HOME ${{PATH}} * ? ~ # ! %")
    job = submit(pulsar_stack, "sleeper", seconds=0, message=message)
    st = wait(pulsar_stack, job)
    assert st["state"] == "SUCCESS", explain(pulsar_stack, job)
    assert tarball(pulsar_stack, job)["sleeper.txt"] == (message + "\n").encode()
    assert logs(pulsar_stack, job)["stdout"].splitlines()[0] == message
    assert message in metadata(pulsar_stack, job)["argv"]
    assert not list(tmp_path.glob("pwned*")), "a shell interpreted the option value"


def test_cancel_stops_the_remote_job(pulsar_stack):
    job = submit(pulsar_stack, "sleeper", seconds=120, message="cancel me")
    server, pulsar_id = wait_running_on_pulsar(pulsar_stack, job)
    r = pulsar_stack.client.post(f"{API}/job/{job}/cancel")
    assert r.status_code in (200, 202), r.get_json()
    st = wait(pulsar_stack, job)
    assert st["state"] == "CANCELED", explain(pulsar_stack, job)
    deadline = time.time() + 20
    while job_processes(job) and time.time() < deadline:
        time.sleep(0.1)
    assert not job_processes(job), "the app still runs after cancel"
    wait_until(lambda: not pulsar_stack.servers[server].job_dir(pulsar_id).exists(), 30,
               "the cancelled job's removal")       # removed after the end is recorded: waited for
    assert logs(pulsar_stack, job)["stdout"].startswith("cancel me")       # the logs made it back


def test_time_limit_stops_the_remote_job(pulsar_stack):
    job = submit(pulsar_stack, "sleeper_2s", backend=None, seconds=120, message="too slow")
    st = wait(pulsar_stack, job)
    assert st["state"] == "TIMED-OUT", explain(pulsar_stack, job)
    assert "time limit of 2 s" in st["status"]
    deadline = time.time() + 20
    while job_processes(job) and time.time() < deadline:
        time.sleep(0.1)
    assert not job_processes(job), "the app still runs after its time limit"
    assert logs(pulsar_stack, job)["stdout"].startswith("too slow")


def test_wrong_token_aborts_with_a_clear_reason(pulsar_stack):
    job = submit(pulsar_stack, "sleeper", server="bad", seconds=0)
    st = wait(pulsar_stack, job)
    assert st["state"] == "ABORTED", explain(pulsar_stack, job)
    assert "refused the private token" in st["status"] and "HTTP 401" in st["status"]
    assert "not-the-token" not in st["status"]


def test_twenty_jobs_run_at_once_on_a_worker_of_two_processes(pulsar_stack):
    t0 = time.time()
    jobs = [submit(pulsar_stack, "sleeper", seconds=10, message=f"job {i}") for i in range(20)]
    submitted = time.time() - t0
    states = [wait(pulsar_stack, job, timeout=180) for job in jobs]
    assert [s["state"] for s in states] == ["SUCCESS"] * 20, [explain(pulsar_stack, j)
                                                              for j, s in zip(jobs, states, strict=True)
                                                              if s["state"] != "SUCCESS"][:2]
    started, ended = [], []
    for job in jobs:
        events = metadata(pulsar_stack, job)["events"]
        started.append(max(datetime.fromisoformat(e["at"]) for e in events if e["state"] == "RUNNING"))
        ended.append(max(datetime.fromisoformat(e["at"]) for e in events if e["state"] == "SUCCESS"))
    # Every job was RUNNING when the first one ended: all 20 ran at the same time.
    assert max(started) < min(ended), (max(started), min(ended))
    total = time.time() - t0
    print(f"\n20 sleepers of 10 s on a worker of 2 processes: submitted in {submitted:.2f} s, all RUNNING within "
          f"{(max(started) - min(started)).total_seconds():.2f} s, all SUCCESS after {total:.1f} s")
    for i, job in enumerate(jobs):
        assert tarball(pulsar_stack, job)["sleeper.txt"] == f"job {i}\n".encode()


def test_server_that_restarts_and_forgets_the_job_fails_it(pulsar_stack):
    job = submit(pulsar_stack, "sleeper", server="p2", seconds=120)
    wait_running_on_pulsar(pulsar_stack, job)
    p2 = pulsar_stack.servers["p2"]
    p2.crash()                          # the host goes down, the job with it
    assert not job_processes(job)
    p2.wipe()                           # ... and comes back with an empty staging disk
    p2.start()
    st = wait(pulsar_stack, job)
    assert st["state"] == "FAILURE", explain(pulsar_stack, job)
    assert "does not know job" in st["status"] and "p2" in st["status"], st["status"]


def test_server_unreachable_for_too_long_fails_the_job(pulsar_stack):
    job = submit(pulsar_stack, "sleeper", server="p2", seconds=120)
    wait_running_on_pulsar(pulsar_stack, job)
    t0 = time.time()                 # polls may fail (and start the clock) while the crash is under way
    pulsar_stack.servers["p2"].crash()
    assert not job_processes(job)
    st = wait(pulsar_stack, job, timeout=UNREACHABLE_TIMEOUT + 90)
    assert st["state"] == "FAILURE", explain(pulsar_stack, job)
    assert "unreachable" in st["status"] and "cannot connect" in st["status"], st["status"]
    assert time.time() - t0 >= UNREACHABLE_TIMEOUT - 1
    pulsar_stack.servers["p2"].start()


def test_health_asks_every_server_with_its_token(pulsar_stack):
    # The stack's servers include "bad" (p1 with a wrong token): /health says so, without the token.
    anonymous = pulsar_stack.client.get("/health").get_json()["checks"]["backends"]["pulsar"]
    assert anonymous["status"] == "down" and "error" not in anonymous, anonymous     # no texts for anonymous callers
    health = full_health(pulsar_stack.client)["backends"]["pulsar"]     # what an admin sees
    assert health["status"] == "down", health
    assert "bad (" in health["error"] and "private token was refused" in health["error"], health
    assert "not-the-token" not in health["error"] and "p1 (" not in health["error"]
    good = {n: c for n, c in pulsar_stack.settings["BACKENDS"]["pulsar"]["servers"].items() if n != "bad"}
    backend = PulsarBackend(pulsar_stack.settings, {**pulsar_stack.settings["BACKENDS"]["pulsar"], "servers": good})
    assert backend.health() == {"servers": {"p1": "ok", "p2": "ok"}}
    assert not any(p.name == "caesar-health-probe"
                   for s in pulsar_stack.servers.values() for p in (s.dir / "staging").iterdir())


def test_private_tokens_never_leak(pulsar_stack):
    """Last on purpose: every job of this module (failed, aborted, cancelled ones too) and the worker's log."""
    job = submit(pulsar_stack, "sleeper", seconds=0)
    assert wait(pulsar_stack, job)["state"] == "SUCCESS", explain(pulsar_stack, job)
    tokens = [s.token for s in pulsar_stack.servers.values()]
    listing = pulsar_stack.client.get(f"{API}/jobs?per_page=1000&backend=pulsar").get_json()["jobs"]
    assert len(listing) >= 30
    seen = []
    for item in listing:
        job_id = item["job_id"]
        for path in ("status", "metadata", "logs"):
            seen.append(pulsar_stack.client.get(f"{API}/job/{job_id}/{path}").get_data(as_text=True))
    seen.append(pulsar_stack.worker.log())
    assert "caesar.poll_job" in pulsar_stack.worker.log()
    for text in seen:
        for token in tokens:
            assert token not in text
    # Nothing under the stack's root either: job directories, database, broker folders.
    for path in pulsar_stack.root.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for token in tokens:
                assert token.encode() not in content, path
