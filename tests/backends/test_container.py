"""Container backend end to end: API → real Celery worker (2 processes) → real Podman (Docker Engine API).

Success with a staged read-only input and a non-root user (that a request cannot change), live logs, non-zero exit,
time-out, memory limit (OOM), cancel within 2 s, a missing image, an engine that is not there, 50 mixed jobs that
leave no container or volume behind, sfinder giving the same catalogue in the caesar-apps image as on the local
backend, and /health."""
from __future__ import annotations

import csv
import io
import os
import tarfile
import time

import docker
import pytest

from ..apps.fitsgen import make_image
from ..support import API, TERMINAL, client_status, full_health, upload, wait_state
from .container_fixtures import MISSING_IMAGE, ContainerStack, make_stack

JOB_LABEL = "caesar.job_id"
JOB_TIMEOUT = 120          # generous: other engineers' suites share these 2 cores


def submit(container_stack: ContainerStack, app: str, backend: str | None = None, backend_options: dict | None = None,
           **inputs) -> str:
    body: dict = {"app": app, "job_inputs": inputs}
    if backend:
        body["backend"] = backend
    if backend_options:
        body["backend_options"] = backend_options
    r = container_stack.client.post(f"{API}/job", json=body)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def wait(container_stack: ContainerStack, job_id: str, states=TERMINAL, timeout: float = JOB_TIMEOUT) -> dict:
    return wait_state(client_status(container_stack.client), job_id, states=states, timeout=timeout)


def metadata(container_stack: ContainerStack, job_id: str) -> dict:
    return container_stack.client.get(f"{API}/job/{job_id}/metadata").get_json()


def logs(container_stack: ContainerStack, job_id: str) -> dict:
    return container_stack.client.get(f"{API}/job/{job_id}/logs").get_json()


def tarball(container_stack: ContainerStack, job_id: str) -> dict[str, bytes]:
    """Regular files of the job's output tarball, by path below its top directory."""
    r = container_stack.client.get(f"{API}/job/{job_id}/output")
    assert r.status_code == 200, r.get_json()
    with tarfile.open(fileobj=io.BytesIO(r.data), mode="r:gz") as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()
                if m.isfile() and "/" in m.name}


def our_containers(engine, job_ids) -> list[dict]:
    """Containers (any state) labelled with one of these jobs."""
    ids = set(job_ids)
    return [c for c in engine.containers(all=True, filters={"label": JOB_LABEL})
            if (c.get("Labels") or {}).get(JOB_LABEL) in ids]


def assert_gone(engine, container_stack: ContainerStack, job_id: str) -> None:
    assert our_containers(engine, [job_id]) == [], f"container of {job_id} left behind"
    handle = metadata(container_stack, job_id)["handle"]
    if handle:
        with pytest.raises(docker.errors.NotFound):
            engine.inspect_container(handle)
    assert not (container_stack.workdir(job_id) / "tmp").exists()


def test_success_runs_as_non_root_with_read_only_inputs(container_stack, engine):
    data = upload(container_stack.client, b"caesar container input\n", name="data.txt")
    script = ('echo hello; echo warning >&2; id -u > uid.txt; cat "$0" > copy.txt; '
              'if touch inputs/new 2>/dev/null; then echo inputs-writable; else echo inputs-read-only; fi; pwd')
    job_id = submit(container_stack, "bb", script=script, inputfile=data["uuid"])
    status = wait(container_stack, job_id)
    assert status["state"] == "SUCCESS", status
    assert status["exit_status"] == 0
    files = tarball(container_stack, job_id)
    assert files["stdout.log"].decode().split() == ["hello", "inputs-read-only", "/job"]
    assert files["stderr.log"] == b"warning\n"
    assert files["copy.txt"] == b"caesar container input\n"
    assert files["uid.txt"] == b"1000\n"                     # the container user, not root
    meta = metadata(container_stack, job_id)
    assert meta["backend"] == "container" and meta["image"] == "localhost/busybox:latest"
    workdir = container_stack.workdir(job_id)
    # what the container's user wrote is handed back to the worker's user
    assert {p.stat().st_uid for p in workdir.rglob("*") if "inputs" not in p.parts} == {os.geteuid()}
    assert_gone(engine, container_stack, job_id)


def test_user_option_is_refused(container_stack):
    # The container user comes from the app or the backend settings, never from a request (test_container_security).
    for user in ("root", "nobody; rm -rf /"):
        r = container_stack.client.post(f"{API}/job", json={"app": "bb", "job_inputs": {"script": "true"},
                                                  "backend_options": {"user": user}})
        assert r.status_code == 400 and "'user'" in r.get_json()["message"], r.get_json()


def test_non_zero_exit_is_failure_with_the_reason(container_stack, engine):
    job_id = submit(container_stack, "bb", script="echo working; echo 'bad input: no sources' >&2; exit 3")
    status = wait(container_stack, job_id)
    assert status["state"] == "FAILURE", status
    assert status["exit_status"] == 3
    assert "status 3" in status["status"] and "bad input: no sources" in status["status"]
    assert tarball(container_stack, job_id)["stdout.log"] == b"working\n"
    assert_gone(engine, container_stack, job_id)


def test_time_limit_is_timed_out(container_stack, engine):
    start = time.monotonic()
    job_id = submit(container_stack, "bb-short", script="echo started; sleep 60; echo never")
    status = wait(container_stack, job_id)
    assert status["state"] == "TIMED-OUT", status
    assert "time limit of 2 s" in status["status"]
    assert time.monotonic() - start < 45
    assert tarball(container_stack, job_id)["stdout.log"] == b"started\n"
    assert_gone(engine, container_stack, job_id)


def test_memory_limit_oom_is_failure_saying_memory_limit(container_stack, engine):
    job_id = submit(container_stack, "hog")
    status = wait(container_stack, job_id)
    assert status["state"] == "FAILURE", status
    assert "memory limit" in status["status"], status
    assert status["exit_status"] == 137
    assert_gone(engine, container_stack, job_id)


def test_cancel_kills_the_container_within_2_s(container_stack, engine):
    job_id = submit(container_stack, "bb", script="echo started; sleep 60; echo never > never.txt")
    wait(container_stack, job_id, states=("RUNNING", *TERMINAL))
    deadline = time.time() + 30
    while logs(container_stack, job_id)["stdout"] != "started\n":   # live: streamed from the engine while it runs
        assert time.time() < deadline, logs(container_stack, job_id)
        time.sleep(0.1)
    assert [c["State"] for c in our_containers(engine, [job_id])] == ["running"]
    start = time.monotonic()
    r = container_stack.client.post(f"{API}/job/{job_id}/cancel")
    assert r.status_code == 200, r.get_json()
    while any(c["State"] == "running" for c in our_containers(engine, [job_id])):
        assert time.monotonic() - start < 10, "container still running 10 s after cancel"
        time.sleep(0.05)
    stopped_after = time.monotonic() - start
    status = wait(container_stack, job_id)
    assert status["state"] == "CANCELED", status
    assert stopped_after < 2.0, f"container stopped {stopped_after:.2f} s after the cancel request"
    assert "never.txt" not in tarball(container_stack, job_id)
    assert_gone(engine, container_stack, job_id)


def test_missing_image_is_aborted_naming_the_image(container_stack, engine):
    job_id = submit(container_stack, "bb-missing")
    status = wait(container_stack, job_id)
    assert status["state"] == "ABORTED", status
    assert MISSING_IMAGE in status["status"]
    assert "Traceback" not in status["status"]
    assert our_containers(engine, [job_id]) == []


def test_engine_down_is_aborted_naming_the_socket(tmp_path, engine):
    socket = tmp_path / "no-engine" / "docker.sock"
    down = make_stack(tmp_path, f"unix://{socket}", ["container"])
    try:
        job_id = submit(down, "bb", script="echo never")
        status = wait(down, job_id)
        public = down.client.get("/health").get_json()["checks"]["backends"]["container"]
        health = full_health(down.client)["backends"]["container"]
    finally:
        down.worker.stop()
    assert status["state"] == "ABORTED", status
    assert str(socket) in status["status"]
    assert "Traceback" not in status["status"]
    assert public["status"] == "down" and "error" not in public, public     # the socket's path only for admins
    assert health["status"] == "down" and str(socket) in health["error"], health


def test_health_reports_the_engine(container_stack):
    assert container_stack.client.get("/health").get_json()["checks"]["backends"]["container"]["status"] == "ok"
    health = full_health(container_stack.client)["backends"]["container"]
    assert health["detail"]["engine"] and health["detail"]["base_url"].startswith("unix://")


def test_fifty_mixed_jobs_leave_nothing_behind(container_stack, engine):
    volumes_before = {v["Name"] for v in engine.volumes().get("Volumes") or []}
    kinds = ["ok"] * 20 + ["fail"] * 14 + ["timeout"] * 6 + ["cancel"] * 10
    kinds = [kinds[(i * 7) % len(kinds)] for i in range(len(kinds))]     # interleaved, deterministic
    jobs: dict[str, str] = {}
    for i, kind in enumerate(kinds):
        if kind == "ok":
            job_id = submit(container_stack, "bb", script=f"echo ok {i} > out.txt")
        elif kind == "fail":
            job_id = submit(container_stack, "bb", script=f"echo failing {i} >&2; exit 2")
        elif kind == "timeout":
            job_id = submit(container_stack, "bb-short", script="sleep 60")
        else:
            job_id = submit(container_stack, "bb", script="sleep 60")
        jobs[job_id] = kind
    cancels = [j for j, k in jobs.items() if k == "cancel"]
    for job_id in cancels[:3]:                  # some while still queued, the rest once running
        container_stack.client.post(f"{API}/job/{job_id}/cancel")
    status = client_status(container_stack.client)
    states: dict[str, str] = {}
    deadline = time.time() + 300
    while len(states) < len(jobs):
        assert time.time() < deadline, f"unfinished after 300 s: {set(jobs) - set(states)}"
        for job_id in jobs:
            if job_id in states:
                continue
            state = status(job_id)["state"]
            if state in TERMINAL:
                states[job_id] = state
            elif jobs[job_id] == "cancel" and state == "RUNNING":
                container_stack.client.post(f"{API}/job/{job_id}/cancel")
        time.sleep(0.2)
    expected = {"ok": "SUCCESS", "fail": "FAILURE", "timeout": "TIMED-OUT", "cancel": "CANCELED"}
    wrong = {j: (jobs[j], s) for j, s in states.items() if s != expected[jobs[j]]}
    assert not wrong, wrong
    assert our_containers(engine, jobs) == []
    for job_id in jobs:
        handle = metadata(container_stack, job_id)["handle"]
        if handle:
            with pytest.raises(docker.errors.NotFound):
                engine.inspect_container(handle)
        assert not (container_stack.workdir(job_id) / "tmp").exists()
    in_use = {m.get("Name") for c in engine.containers(all=True) for m in c.get("Mounts") or []}
    new_volumes = {v["Name"] for v in engine.volumes().get("Volumes") or []} - volumes_before - in_use
    assert new_volumes == set()


def read_rows(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_sfinder_in_the_container_matches_the_local_backend(container_stack, tmp_path):
    image = make_image(tmp_path / "field.fits", gradient=0.01)
    data = upload(container_stack.client, image.read_bytes(), name="field.fits")
    inputs = {"inputfile": data["uuid"], "seedthr": 5.0, "deblend": True}
    local_id = submit(container_stack, "sfinder", backend="local", **inputs)
    container_id = submit(container_stack, "sfinder", backend="container", **inputs)
    outputs = {}
    for name, job_id in (("local", local_id), ("container", container_id)):
        status = wait(container_stack, job_id, timeout=240)
        files = tarball(container_stack, job_id) if status["state"] == "SUCCESS" else {}
        assert status["state"] == "SUCCESS", (name, status, files.get("stderr.log", b"")[-2000:])
        outputs[name] = files
    local, inside = (read_rows(outputs[n]["field_catalog.csv"]) for n in ("local", "container"))
    assert len(local) == 8 and len(inside) == len(local)
    for a, b in zip(local, inside, strict=True):
        assert a["id"] == b["id"] and a["npix"] == b["npix"]
        assert abs(float(a["x"]) - float(b["x"])) < 0.01 and abs(float(a["y"]) - float(b["y"])) < 0.01
        assert float(b["flux"]) == pytest.approx(float(a["flux"]), rel=1e-3)
        assert float(b["peak"]) == pytest.approx(float(a["peak"]), rel=1e-3)
        assert float(b["ra"]) == pytest.approx(float(a["ra"]), abs=1e-6)
    assert outputs["container"]["field_preview.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert metadata(container_stack, container_id)["image"] == "localhost/caesar-apps:latest"
