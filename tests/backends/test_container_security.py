"""Attacks on the container backend, through the API and a real worker on real Podman: a request asking for root or
another uid (app jobs and TES), a job looking for capabilities, privilege gains, a writable root filesystem or a
network, a fork bomb (bounded, so that it could never hurt this machine if the pids limit were missing), and images
outside ALLOWED_IMAGES."""
from __future__ import annotations

import io
import re
import tarfile
import time

import pytest

from ..support import API, client_status, wait_state
from .security_fixtures import OUTSIDE_IMAGE, PIDS_LIMIT, SecurityStack

TES = "/ga4gh/tes/v1"
TIMEOUT = 120              # generous: other engineers' suites share these 2 cores
FORK_BOUND = 200           # the most processes the fork bomb below ever makes, pids limit or not
# What a job prints about itself (busybox applets only): its uid, the capability sets and no_new_privs of its
# process, its mounts, what a write to the root filesystem says, and whether HOME takes a write.
SELF_REPORT = ("echo uid=$(id -u); cat /proc/self/status /proc/mounts; echo touch=$(touch /probe 2>&1 || true); "
               "mkdir -p $HOME/.cache && echo cached > $HOME/.cache/probe && echo home=$HOME")


def submit(stack: SecurityStack, app: str, backend_options: dict | None = None, **inputs):
    body: dict = {"app": app, "job_inputs": inputs}
    if backend_options is not None:
        body["backend_options"] = backend_options
    return stack.client.post(f"{API}/job", json=body)


def run(stack: SecurityStack, app: str, **inputs) -> tuple[dict, dict[str, bytes]]:
    r = submit(stack, app, **inputs)
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["job_id"]
    status = wait_state(client_status(stack.client), job_id, timeout=TIMEOUT)
    out = stack.client.get(f"{API}/job/{job_id}/output")
    assert out.status_code == 200, out.get_json()
    with tarfile.open(fileobj=io.BytesIO(out.data), mode="r:gz") as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()
                 if m.isfile() and "/" in m.name}
    return status, files


def report(stdout: bytes) -> dict[str, str]:
    """What SELF_REPORT shows: uid, CapPrm/CapEff/CapBnd/NoNewPrivs, root (the root mount's ro/rw), touch, home."""
    text = stdout.decode()
    seen = dict(re.findall(r"^(CapPrm|CapEff|CapBnd|NoNewPrivs):\s*(\S+)$", text, re.M))
    seen.update(re.findall(r"^(uid|touch|home)=(.*)$", text, re.M))
    root = re.search(r"^\S+ / \S+ (\w+)", text, re.M)
    seen["root"] = root.group(1) if root else "?"
    return seen


def interfaces(stdout: bytes) -> list[str]:
    """Network interfaces in a /proc/net/dev listing."""
    return sorted(re.findall(r"^\s*([\w.-]+):", stdout.decode(), re.M))


def job_count(stack: SecurityStack) -> int:
    return len(stack.client.get(f"{API}/jobs").get_json())


def tes_task(stack: SecurityStack, executor: dict, resources: dict | None = None):
    task: dict = {"executors": [executor]}
    if resources:
        task["resources"] = resources
    return stack.client.post(f"{TES}/tasks", json=task)


def tes_wait(stack: SecurityStack, task_id: str) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while True:
        task = stack.client.get(f"{TES}/tasks/{task_id}", query_string={"view": "FULL"}).get_json()
        if task["state"] in ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"):
            return task
        assert time.monotonic() < deadline, f"TES task {task_id} still {task['state']} after {TIMEOUT} s"
        time.sleep(0.2)


def tes_count(stack: SecurityStack) -> int:
    return len(stack.client.get(f"{TES}/tasks").get_json().get("tasks") or [])


# ---- the container user ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("user", ["root", "0", "0:0", "1001:1001"])
def test_a_request_cannot_choose_the_container_user(secure_stack, user):
    before = job_count(secure_stack)
    r = submit(secure_stack, "probe", backend_options={"user": user}, script="id -u")
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["field"] == "backend_options" and "'user'" in r.get_json()["message"]
    assert job_count(secure_stack) == before                 # nothing half-created


def test_a_tes_task_cannot_choose_the_container_user(secure_stack):
    r = tes_task(secure_stack, {"image": "localhost/busybox:latest", "command": ["id", "-u"]},
                 {"backend_parameters": {"user": "root"}})
    assert r.status_code == 400, r.get_json()
    assert "backend_parameters" in r.get_json()["message"] and "'user'" in r.get_json()["message"]


# ---- what a job can do inside its container ----------------------------------------------------------------------
def test_job_has_no_capabilities_no_new_privileges_and_a_read_only_root(secure_stack):
    status, files = run(secure_stack, "probe", script=SELF_REPORT)
    assert status["state"] == "SUCCESS", status
    seen = report(files["stdout.log"])
    assert seen["uid"] == "1000"
    assert seen["CapPrm"] == seen["CapEff"] == seen["CapBnd"] == "0000000000000000", seen
    assert seen["NoNewPrivs"] == "1", seen
    assert seen["root"] == "ro", seen
    assert "Read-only file system" in seen["touch"], seen
    assert seen["home"] == "/tmp", seen
    assert not any(".cache" in name for name in files), sorted(files)      # HOME is scratch, not an output


def test_root_chosen_by_the_operator_still_has_no_capabilities(secure_stack):
    status, files = run(secure_stack, "probe-root", script=SELF_REPORT)
    assert status["state"] == "SUCCESS", status
    seen = report(files["stdout.log"])
    assert seen["uid"] == "0"
    assert seen["CapEff"] == seen["CapBnd"] == "0000000000000000", seen
    assert "Read-only file system" in seen["touch"], seen


def test_no_network_unless_the_app_allows_it(secure_stack):
    status, files = run(secure_stack, "probe", script="cat /proc/net/dev")
    assert status["state"] == "SUCCESS", status
    assert interfaces(files["stdout.log"]) == ["lo"]                      # network mode "none"
    status, files = run(secure_stack, "probe-net", script="cat /proc/net/dev")
    assert status["state"] == "SUCCESS", status
    assert len(interfaces(files["stdout.log"])) > 1, files["stdout.log"]   # the app declares network: true


def test_fork_bomb_stays_inside_the_pids_limit(secure_stack):
    # Bounded: at most FORK_BOUND sleeping children for at most 30 s, all killed before the job ends.
    script = f"""
import os, time
children, error = [], "none"
deadline = time.monotonic() + 30
while len(children) < {FORK_BOUND} and time.monotonic() < deadline:
    try:
        children.append(os.posix_spawn("/bin/sleep", ["sleep", "120"], {{}}))
    except OSError as exc:
        error = exc.strerror
        break
print(len(children), error.replace(" ", "_"))
for pid in children:
    os.kill(pid, 9)
for pid in children:
    os.waitpid(pid, 0)
"""
    status, files = run(secure_stack, "py", script=script)
    assert status["state"] == "SUCCESS", (status, files.get("stderr.log"))
    made, error = files["stdout.log"].decode().split()
    assert int(made) < PIDS_LIMIT, f"made {made} processes under a pids limit of {PIDS_LIMIT}"
    assert error == "Resource_temporarily_unavailable"


def test_tes_executor_is_hardened_too(secure_stack):
    r = tes_task(secure_stack, {"image": "localhost/busybox:latest", "command": ["sh", "-c", SELF_REPORT]})
    assert r.status_code == 200, r.get_json()
    task = tes_wait(secure_stack, r.get_json()["id"])
    assert task["state"] == "COMPLETE", task["logs"][0].get("system_logs")
    seen = report(task["logs"][0]["logs"][0]["stdout"].encode())
    assert seen["CapEff"] == seen["CapBnd"] == "0000000000000000" and seen["NoNewPrivs"] == "1", seen
    assert seen["root"] == "ro" and "Read-only file system" in seen["touch"], seen
    assert seen["home"] == "/tmp", seen


# ---- images --------------------------------------------------------------------------------------------------------
def test_app_image_outside_the_allow_list_is_a_400(secure_stack):
    before = job_count(secure_stack)
    r = submit(secure_stack, "elsewhere")
    assert r.status_code == 400, r.get_json()
    assert OUTSIDE_IMAGE in r.get_json()["message"] and "ALLOWED_IMAGES" in r.get_json()["message"]
    assert job_count(secure_stack) == before


def test_tes_image_outside_the_allow_list_is_a_400(secure_stack):
    before = tes_count(secure_stack)
    r = tes_task(secure_stack, {"image": "quay.io/evil/miner:latest", "command": ["true"]})
    assert r.status_code == 400, r.get_json()
    body = r.get_json()
    assert "executors[0].image" in body["message"] and "quay.io/evil/miner:latest" in body["message"]
    assert tes_count(secure_stack) == before


def test_allow_list_reads_short_names_as_docker_does():
    from caesar_rest.images import full_reference, refusal

    assert full_reference("busybox") == "docker.io/library/busybox:latest"
    assert full_reference("localhost/busybox") == "localhost/busybox:latest"
    assert full_reference("registry.example.org:5000/a/b@sha256:00") == "registry.example.org:5000/a/b@sha256:00"
    settings = {"ALLOWED_IMAGES": ["docker.io/library/python:3.*", "localhost/*"]}
    assert refusal(settings, "python:3.12") is None and refusal(settings, "localhost/x/y:1") is None
    assert "not allowed" in refusal(settings, "python:2.7") and "not allowed" in refusal(settings, "evil/python:3.1")
    assert refusal({"ALLOWED_IMAGES": []}, "anything/at:all") is None
