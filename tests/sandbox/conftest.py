"""Sandbox fixtures: the API and a worker as real processes on the embedded stack (real bubblewrap, the worker
started with a secret in its environment), bait files the jobs must not read, a TCP service on 127.0.0.1 that
counts who reached it, and helpers that run a probe as an app job and as a TES host-runtime task."""
from __future__ import annotations

import io
import json
import os
import secrets
import socket
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from ..support import API, embedded_settings, start_api, start_worker, wait_state, write_apps

PIDS_MAX = 48
# The probe: one attack chosen by --action, its result printed as JSON. Options come as argv ("--action X").
PROBE = r"""
import json, os, signal, socket, sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
action, target = args["--action"], args.get("--target", "")
out = {}
try:
    if action == "read":
        out["data"] = open(target).read()
    elif action == "env":
        found = [k for k, v in os.environ.items() if target in v]
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if target.encode() in open(f"/proc/{pid}/environ", "rb").read():
                    found.append(f"/proc/{pid}/environ")
            except OSError:
                pass
        out["found"] = found
        out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    elif action == "list":
        out["names"] = sorted(os.listdir(target))
    elif action == "connect":
        with socket.create_connection(("127.0.0.1", int(target)), timeout=3) as s:
            out["data"] = s.recv(100).decode()
    elif action == "fork":
        children = []
        for _ in range(int(target)):
            try:
                pid = os.fork()
            except OSError as exc:
                out["fork_error"] = exc.strerror
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
        out["forked"] = len(children)
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    elif action == "escape":          # a child leaves the process group and would outlive the job
        if os.fork() == 0:
            os.setsid()
            time.sleep(300)
            os._exit(0)
        time.sleep(300)
    elif action == "readinput":       # a staged upload (a file option), read through its read-only bind
        out["data"] = open(args["--input"]).read()
    elif action == "home":
        os.makedirs(os.path.expanduser("~/.cache"), exist_ok=True)
        open(os.path.expanduser("~/.cache/left-behind"), "w").write("x")
        out["home"] = os.environ["HOME"]
    out["ok"] = True
except Exception as exc:
    out["error"] = f"{exc.__class__.__name__}: {exc}"
print(json.dumps(out), flush=True)
"""
PROBE_APP = f"""
name: probe
version: "1"
description: Tries one thing a hostile job would (sandbox tests).
command: [python3, -I, -c, {json.dumps(PROBE)}]
backends: [local]
resources: {{cpus: 1, time_limit: 60}}
options:
  action: {{type: enum, allowed: [read, env, list, connect, fork, escape, home, readinput], required: true}}
  target: {{type: string, default: ""}}
  input: {{type: file}}
"""

# The same probe from an app whose operator lets it reach the network (network: true in its YAML).
NET_PROBE_APP = PROBE_APP.replace("name: probe", "name: netprobe").replace("backends: [local]",
                                                                           "backends: [local]\nnetwork: true")


class Listener:
    """A TCP service on 127.0.0.1 only: answers "internal" and counts the connections it accepted."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.sendall(b"internal")


class Stack:
    """API + worker processes; runs the probe as an app job or as a TES host-runtime task, returns its JSON."""

    def __init__(self, base: str, root: Path) -> None:
        self.base = base
        self.root = root

    def app_job(self, action: str, target: str = "", timeout: float = 90, app: str = "probe",
                **inputs: str) -> tuple[dict[str, Any], dict[str, Any]]:
        r = requests.post(f"{self.base}{API}/job", json={"app": app, "job_inputs": {"action": action,
                                                                                       "target": target, **inputs}},
                          timeout=30)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        status = wait_state(lambda j: requests.get(f"{self.base}{API}/job/{j}/status", timeout=10).json(), job_id,
                            timeout=timeout)
        assert status["state"] == "SUCCESS", status
        files = self.tarball(job_id)
        stdout = next(v for k, v in files.items() if k.endswith("/stdout.log") or k == "stdout.log")
        return json.loads(stdout.decode().strip().splitlines()[-1]), files

    def tarball(self, job_id: str) -> dict[str, bytes]:
        r = requests.get(f"{self.base}{API}/job/{job_id}/output", timeout=60)
        assert r.status_code == 200, r.text
        with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}

    def submit(self, how: str, action: str, target: str = "", volumes: list[str] | None = None) -> str:
        """Start the probe as an app job or a TES task; returns its id."""
        if how == "app_job":
            r = requests.post(f"{self.base}{API}/job",
                              json={"app": "probe", "job_inputs": {"action": action, "target": target}}, timeout=30)
            assert r.status_code == 202, r.text
            return r.json()["job_id"]
        body = {"executors": [{"image": "python:3", "command": ["python3", "-I", "-c", PROBE, "--action", action,
                                                                "--target", target]}],
                "volumes": volumes or []}
        r = requests.post(f"{self.base}/ga4gh/tes/v1/tasks", json=body, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["id"]

    def cancel(self, how: str, job_id: str) -> str:
        """Cancel and wait for the end; returns the final state."""
        if how == "app_job":
            assert requests.post(f"{self.base}{API}/job/{job_id}/cancel", timeout=10).status_code in (200, 202)
            return wait_state(lambda j: requests.get(f"{self.base}{API}/job/{j}/status", timeout=10).json(),
                              job_id)["state"]
        assert requests.post(f"{self.base}/ga4gh/tes/v1/tasks/{job_id}:cancel", timeout=10).status_code == 200
        return self.tes_wait(job_id)["state"]

    def tes_wait(self, task_id: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.time() + timeout
        while True:
            task = requests.get(f"{self.base}/ga4gh/tes/v1/tasks/{task_id}", params={"view": "FULL"}, timeout=10).json()
            if task["state"] in ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"):
                return task
            assert time.time() < deadline, task
            time.sleep(0.1)

    def tes_task(self, action: str, target: str = "", timeout: float = 90,
                 volumes: list[str] | None = None) -> dict[str, Any]:
        task = self.tes_wait(self.submit("tes_task", action, target, volumes), timeout)
        assert task["state"] == "COMPLETE", task
        return json.loads(task["logs"][-1]["logs"][-1]["stdout"].strip().splitlines()[-1])


@pytest.fixture(scope="module")
def pids_max() -> int:
    return PIDS_MAX


@pytest.fixture(scope="module")
def secret() -> str:
    return "s3-secret-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def listener():
    server = Listener()
    yield server
    server.sock.close()


@pytest.fixture(scope="module")
def bait(tmp_path_factory, stack):
    """Files a job must not read: one in the service's ROOT, one in root's home."""
    text = "bait-" + secrets.token_hex(8)
    in_root = stack.root / "bait.txt"
    in_home = Path("/root") / f".caesar-sandbox-bait-{secrets.token_hex(4)}"
    for path in (in_root, in_home):
        path.write_text(text)
        os.chmod(path, 0o644)           # readable by anyone who can reach it: only the sandbox stands in the way
    yield {"text": text, "root": in_root, "home": in_home}
    in_home.unlink()


@pytest.fixture(scope="module")
def service_config(secret):
    """The service's settings file in /etc, as the systemd units keep it, with an env file of secrets beside it
    (world-readable: only the sandbox keeps jobs from them)."""
    import shutil

    directory = Path("/etc") / f"caesar-sandbox-test-{secrets.token_hex(4)}"
    directory.mkdir()
    (directory / "settings.yml").write_text("LOG_LEVEL: INFO\n")
    (directory / "caesar-rest.env").write_text(f"CAESAR_S3_SECRET_ACCESS_KEY={secret}\n")
    for path in directory.iterdir():
        path.chmod(0o644)
    yield directory
    shutil.rmtree(directory)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, secret, service_config):
    base = tmp_path_factory.mktemp("sandbox")
    apps = write_apps(base / "apps", {"probe": PROBE_APP, "netprobe": NET_PROBE_APP})
    # CONFIG becomes CAESAR_CONFIG in the processes' environment (tests.support.settings_env).
    settings = embedded_settings(base / "var", APPS_DIR=str(apps), TES_HOST_RUNTIME=True,
                                 S3_SECRET_ACCESS_KEY=secret, SANDBOX_PIDS_MAX=PIDS_MAX,
                                 CONFIG=str(service_config / "settings.yml"))
    (base / "var").mkdir(parents=True, exist_ok=True)
    api, url = start_api(settings, base / "api.log")
    worker = start_worker(settings, ["local"], base / "worker.log", concurrency=1)
    # The worker's environment really carries the secret (settings_env passes it as CAESAR_S3_SECRET_ACCESS_KEY).
    with open(f"/proc/{worker.pid}/environ", "rb") as fh:
        assert secret.encode() in fh.read()
    yield Stack(url, Path(settings["ROOT"]))
    worker.stop()
    api.stop()


@pytest.fixture
def delegated_cgroup():
    """A control group under the one root's sandboxes use, handed to nobody (what systemd's Delegate= does)."""
    import shutil

    from workers.cgroups import Cgroups

    parent = next(iter(Cgroups.detect().parents.values()))
    group = parent / f"delegated-{secrets.token_hex(4)}"
    group.mkdir()
    for path in (group, *group.iterdir()):
        shutil.chown(path, "nobody", "nogroup")
    yield group
    for child in sorted(group.iterdir(), reverse=True):
        if child.is_dir():
            child.rmdir()
    group.rmdir()
