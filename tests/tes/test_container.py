"""TES executors as containers: the container backend on real Podman (scripts/podman.sh), one container per
executor with the task directories mounted at their paths, stdin fed, stdout/stderr files written."""
from __future__ import annotations

import docker
import pytest

from ..backends.container_fixtures import BUSYBOX
from ..support import embedded_settings, start_api, start_worker
from .conftest import TOKENS, USERS, Tes


@pytest.fixture(scope="module")
def container_tes(tmp_path_factory, podman_socket):
    base = tmp_path_factory.mktemp("tes-container")
    files = base / "files"
    (files / "alice").mkdir(parents=True)           # alice's own file:// directory (TES_FILE_ROOTS scope user)
    settings = embedded_settings(base / "var", AUTH_MODE="token", AUTH_USERS=USERS,
                                 TES_FILE_ROOTS=[{"path": str(files), "scope": "user"}],
                                 BACKENDS={"local": {}, "container": {"base_url": f"unix://{podman_socket}"}})
    worker = start_worker(settings, ["container"], base / "worker.log", concurrency=2)
    try:
        api, url = start_api(settings, base / "api.log")
    except Exception:
        worker.stop()
        raise
    engine = docker.APIClient(base_url=f"unix://{podman_socket}", version="1.41")
    yield Tes(url, TOKENS["alice"]), files / "alice", engine
    api.stop()
    worker.stop()


def test_executors_run_as_containers_with_task_directories(container_tes):
    tes, files, engine = container_tes
    task = tes.run({
        "inputs": [{"path": "/data/in.txt", "content": "hello\n"}],
        "volumes": ["/work"],
        "outputs": [{"path": "/work", "url": f"file://{files}/work", "type": "DIRECTORY"}],
        "executors": [
            {"image": BUSYBOX, "command": ["md5sum"], "stdin": "/data/in.txt", "stdout": "/work/sum.txt"},
            {"image": BUSYBOX, "command": ["sh", "-c", "ls /data > listing; cat sum.txt; echo warn >&2"],
             "workdir": "/work", "stderr": "/work/err.txt"},
        ]}, timeout=120)
    assert task["state"] == "COMPLETE", task["logs"][0]["system_logs"]
    assert task["logs"][0]["metadata"]["runtime"] == "container"
    logs = task["logs"][0]["logs"]
    assert [entry["exit_code"] for entry in logs] == [0, 0]
    assert (files / "work" / "sum.txt").read_text() == "b1946ac92492d2347c6235b4d2611184  -\n"
    assert (files / "work" / "listing").read_text() == "in.txt\n"
    assert (files / "work" / "err.txt").read_text() == "warn\n" and logs[1]["stderr"] == "warn\n"
    assert logs[1]["stdout"] == "b1946ac92492d2347c6235b4d2611184  -\n"
    assert not engine.containers(all=True, filters={"label": f"caesar.job_id={task['id']}"})


def test_container_exit_status_and_cancel(container_tes):
    tes, _files, engine = container_tes
    failed = tes.run({"executors": [{"image": BUSYBOX, "command": ["sh", "-c", "exit 3"]}]}, timeout=120)
    assert failed["state"] == "EXECUTOR_ERROR" and failed["logs"][0]["logs"][0]["exit_code"] == 3

    task_id = tes.create({"executors": [{"image": BUSYBOX, "command": ["sleep", "300"]}]})
    tes.wait(task_id, states=("RUNNING",), timeout=60)
    assert tes.call("POST", f"/tasks/{task_id}:cancel").status_code == 200
    assert tes.wait(task_id, timeout=60)["state"] == "CANCELED"
    assert not engine.containers(all=True, filters={"label": f"caesar.job_id={task_id}"})
