"""GA4GH TES tasks on Slurm (issue 16), end to end: the API and a worker as real processes, the one-node Slurm
cluster, and the job user's rootless Podman on its node (scripts/slurm.sh images). A task chooses the slurm
backend with resources.backend_parameters.backend; its executor runs as a Slurm job that runs the executor's image
with the container backend's hardening, the task's directories mounted at their paths, its stdin opened by Slurm,
its stdout and stderr in the task's logs and files; outputs are uploaded after it."""
from __future__ import annotations

import hashlib
import shutil

import pytest

from ..backends.slurm_fixtures import shared_root, slurm_options
from ..support import embedded_settings, start_api, start_worker
from .conftest import TOKENS, USERS, Tes

BUSYBOX = "localhost/busybox:latest"


@pytest.fixture(scope="module")
def slurm_tes(slurm_cluster, slurm_podman):
    root = shared_root(slurm_cluster)      # job directories the node sees at the same path
    files = root / "files"
    (files / "alice").mkdir(parents=True)
    settings = embedded_settings(root / "var", AUTH_MODE="token", AUTH_USERS=USERS,
                                 TES_FILE_ROOTS=[{"path": str(files), "scope": "user"}], REMOTE_POLL_INTERVAL=0.5,
                                 BACKENDS={"local": {}, "slurm": slurm_options(slurm_cluster, container=slurm_podman),
                                           "slurm_plain": {**slurm_options(slurm_cluster),
                                                           "class": "workers.backends.slurm:SlurmBackend"}})
    worker = start_worker(settings, ["slurm", "slurm_plain"], root / "worker.log", concurrency=1)
    try:
        api, url = start_api(settings, root / "api.log")
    except Exception:
        worker.stop()
        raise
    try:
        yield Tes(url, TOKENS["alice"]), files / "alice", worker, slurm_cluster
    finally:
        api.stop()
        worker.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_tes_task_runs_on_slurm_with_its_logs_and_outputs(slurm_tes):
    tes, files, worker, cluster = slurm_tes
    task = tes.run({
        "name": "md5 on slurm",
        "inputs": [{"path": "/data/in.txt", "content": "hello\n"}],
        "outputs": [{"path": "/work", "url": f"file://{files}/work", "type": "DIRECTORY"}],
        "resources": {"cpu_cores": 1, "ram_gb": 0.25, "backend_parameters": {"backend": "slurm"}},
        "executors": [{"image": BUSYBOX, "command": ["sh", "-c", "md5sum; echo warn >&2; id -u > uid"],
                       "workdir": "/work", "stdin": "/data/in.txt", "stdout": "/work/sum.txt",
                       "stderr": "/work/err.txt"}]}, timeout=180)
    assert task["state"] == "COMPLETE", (task["logs"][-1].get("system_logs"), worker.log()[-3000:])
    log = task["logs"][-1]
    assert log["metadata"]["backend"] == "slurm" and log["metadata"]["runtime"] == "container", log["metadata"]
    entry, = log["logs"]
    digest = hashlib.md5(b"hello\n").hexdigest()       # what md5sum prints
    # stderr may start with rootless Podman's own line on a cgroup v1 node ("Resource limits are not supported and
    # ignored on cgroups V1 rootless systems"): it shares the executor's stderr.
    assert entry["exit_code"] == 0 and entry["stdout"] == f"{digest}  -\n", entry
    assert entry["stderr"].endswith("warn\n") and "warn" not in entry["stdout"], entry
    assert (files / "work" / "sum.txt").read_text() == f"{digest}  -\n"
    assert (files / "work" / "err.txt").read_text().endswith("warn\n")
    assert (files / "work" / "uid").read_text().strip() == cluster["CAESAR_TEST_SLURM_UID"]   # not root
    assert {o["path"] for o in log["outputs"]} >= {"/work/sum.txt", "/work/err.txt", "/work/uid"}, log["outputs"]
    assert "Slurm" not in str(log.get("system_logs")), log["system_logs"]


def test_a_failing_executor_on_slurm_is_an_executor_error_with_its_status(slurm_tes):
    tes, _files, _worker, _cluster = slurm_tes
    task = tes.run({"resources": {"backend_parameters": {"Backend": "slurm"}},
                    "executors": [{"image": BUSYBOX, "command": ["sh", "-c", "echo bad >&2; exit 3"]}]}, timeout=180)
    assert task["state"] == "EXECUTOR_ERROR", task
    entry, = task["logs"][-1]["logs"]
    assert entry["exit_code"] == 3 and entry["stderr"].endswith("bad\n"), entry


@pytest.mark.parametrize("resources, executors, field, words", [
    ({"backend_parameters": {"backend": "slurm_plain"}}, 1, "resources.backend_parameters.backend",
     "does not run TES executors here"),
    ({"backend_parameters": {"backend": "nosuch"}}, 1, "resources.backend_parameters.backend", "not a backend"),
    ({"backend_parameters": {"backend": "slurm"}}, 2, "executors", "runs one executor per task"),
])
def test_a_task_slurm_cannot_run_is_a_400_naming_why(slurm_tes, resources, executors, field, words):
    tes, _files, _worker, _cluster = slurm_tes
    before = tes.call("GET", "/tasks").json().get("tasks", [])
    r = tes.call("POST", "/tasks", json={"resources": resources,
                                         "executors": [{"image": BUSYBOX, "command": ["true"]}] * executors})
    assert r.status_code == 400, r.text
    assert words in r.json()["message"] and field in r.json()["message"], r.json()
    assert tes.call("GET", "/tasks").json().get("tasks", []) == before      # nothing was made
