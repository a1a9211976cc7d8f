"""GA4GH TES tasks on Slurm (issue 16), end to end: the API and a worker as real processes, the one-node Slurm
cluster, and the job user's rootless Podman on its node (scripts/slurm.sh images). A task chooses the slurm
backend with resources.backend_parameters.backend; its executor runs as a Slurm job that runs the executor's image
with the container backend's hardening, the task's directories mounted at their paths, its stdin opened by Slurm,
its stdout and stderr in the task's logs and files; outputs are uploaded after it. A task of several executors is
one Slurm job whose script runs them in order (workers/backends/slurm_tes.py), an ExecutorLog each."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from datetime import datetime

import pytest

from ..backends.slurm_fixtures import shared_root, slurm_options
from ..support import embedded_settings, job_processes, start_api, start_worker, wait_until
from .conftest import TOKENS, USERS, Tes

BUSYBOX = "localhost/busybox:latest"
APPS = "localhost/caesar-apps:latest"       # Debian's python3: a second image
AFTER = 'cat /work/b.txt > /work/after.txt; echo "${ONLY_FIRST:-unset}"'
UPPER = "import os, sys; sys.stdout.write(sys.stdin.read().upper()); print(os.environ['GREETING'], file=sys.stderr)"


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
])
def test_a_task_slurm_cannot_run_is_a_400_naming_why(slurm_tes, resources, executors, field, words):
    tes, _files, _worker, _cluster = slurm_tes
    before = tes.call("GET", "/tasks").json().get("tasks", [])
    r = tes.call("POST", "/tasks", json={"resources": resources,
                                         "executors": [{"image": BUSYBOX, "command": ["true"]}] * executors})
    assert r.status_code == 400, r.text
    assert words in r.json()["message"] and field in r.json()["message"], r.json()
    assert tes.call("GET", "/tasks").json().get("tasks", []) == before      # nothing was made


def containers_of(cluster, podman, task_id: str) -> list[str]:
    """The Slurm user's containers (any state) labelled with the task's id, as Podman on the node lists them."""
    home = podman["runroot"].rsplit("/", 1)[0] + "/home"
    out = subprocess.run(
        ["runuser", "-u", cluster["CAESAR_TEST_SLURM_USER"], "--", "env", f"HOME={home}",
         f"XDG_RUNTIME_DIR={podman['runroot']}", f"CONTAINERS_CONF={podman['conf']}", podman["runtime"],
         "--root", podman["storage"], "--runroot", podman["runroot"], "--storage-driver", "overlay", "ps", "-a",
         "--filter", f"label=caesar.job_id={task_id}", "--format", "{{.Names}}"],
        capture_output=True, text=True, timeout=60, check=True, cwd="/tmp")
    return out.stdout.split()


def _times(entry):
    return [datetime.fromisoformat(entry[k].replace("Z", "+00:00")) for k in ("start_time", "end_time")]


def test_three_executors_run_in_order_in_one_slurm_job_each_with_its_log(slurm_tes):
    tes, files, worker, _cluster = slurm_tes
    odd = "it's $(id) `x` ; | \"\\"       # an argument no shell may read
    task = tes.run({
        "name": "three on slurm",
        "outputs": [{"path": "/work", "url": f"file://{files}/three", "type": "DIRECTORY"}],
        "resources": {"backend_parameters": {"backend": "slurm"}},
        "executors": [
            {"image": BUSYBOX, "command": ["sh", "-c", 'printf "%s\\n" "$1" > a.txt; echo one', "sh", odd],
             "workdir": "/work", "env": {"ONLY_FIRST": "1"}},
            {"image": APPS, "command": ["python3", "-c", UPPER],
             "workdir": "/work", "stdin": "/work/a.txt", "stdout": "/work/b.txt", "env": {"GREETING": odd}},
            {"image": BUSYBOX, "command": ["sh", "-c", "echo third >&2; exit 3"], "ignore_error": True},
            {"image": BUSYBOX, "command": ["sh", "-c", AFTER],
             "env": {"GREETING": "later"}}]}, timeout=240)
    assert task["state"] == "COMPLETE", (task["logs"][-1].get("system_logs"), worker.log()[-3000:])
    log = task["logs"][-1]
    assert [e["exit_code"] for e in log["logs"]] == [0, 0, 3, 0], log["logs"]
    first, second, third, fourth = log["logs"]
    assert fourth["stdout"] == "unset\n", fourth        # each executor has its own env, no other's
    assert first["stdout"] == "one\n" and second["stdout"] == odd.upper() + "\n", log["logs"]
    assert second["stderr"].endswith(odd + "\n") and third["stderr"].endswith("third\n"), log["logs"]
    spans = [_times(e) for e in log["logs"]]
    assert all(start <= end for start, end in spans), spans
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(3)), spans     # one after another
    assert (files / "three" / "a.txt").read_text() == odd + "\n"
    assert (files / "three" / "after.txt").read_text() == odd.upper() + "\n"        # the one after ignore_error ran
    assert any("Executor 2 exited with status 3" in line and "ignore_error" in line
               for line in log["system_logs"]), log["system_logs"]


def test_a_failing_executor_stops_the_later_ones_on_slurm(slurm_tes):
    tes, files, _worker, _cluster = slurm_tes
    task = tes.run({
        "outputs": [{"path": "/work", "url": f"file://{files}/stopped", "type": "DIRECTORY"}],
        "resources": {"backend_parameters": {"backend": "slurm"}},
        "executors": [{"image": BUSYBOX, "command": ["sh", "-c", "echo ran > /work/first"]},
                      {"image": BUSYBOX, "command": ["sh", "-c", "echo bad >&2; exit 3"]},
                      {"image": BUSYBOX, "command": ["sh", "-c", "echo ran > /work/never"]}]}, timeout=240)
    assert task["state"] == "EXECUTOR_ERROR", task
    log = task["logs"][-1]
    assert [e["exit_code"] for e in log["logs"]] == [0, 3], log["logs"]         # the third never started
    assert log["logs"][1]["stderr"].endswith("bad\n"), log["logs"]
    assert (files / "stopped" / "first").read_text() == "ran\n"
    assert not (files / "stopped" / "never").exists()


def test_cancel_during_the_second_executor_stops_the_whole_slurm_job(slurm_tes, slurm_podman):
    tes, _files, _worker, cluster = slurm_tes
    task_id = tes.create({
        "resources": {"backend_parameters": {"backend": "slurm"}},
        "volumes": ["/work"],
        "executors": [{"image": BUSYBOX, "command": ["sh", "-c", "echo ran > /work/first"]},
                      {"image": BUSYBOX, "command": ["sh", "-c", "echo second; sleep 300"]},
                      {"image": BUSYBOX, "command": ["sh", "-c", "echo ran > /work/never"]}]})
    name = f"caesar-{task_id}-1"
    wait_until(lambda: name in containers_of(cluster, slurm_podman, task_id), 120, "the second executor's container")
    r = tes.call("POST", f"/tasks/{task_id}:cancel")
    assert r.status_code == 200, r.text
    task = tes.wait(task_id, timeout=90)
    assert task["state"] == "CANCELED", task
    wait_until(lambda: not job_processes(task_id), 30, "the task's processes gone (the script, podman, sleep)")
    wait_until(lambda: not containers_of(cluster, slurm_podman, task_id), 30, "the task's containers removed")
    entries = task["logs"][-1]["logs"]
    # The first's log, and the second's (stopped: no exit status of its own); the third never started.
    assert len(entries) == 2 and entries[0]["exit_code"] == 0 and entries[1]["stdout"] == "second\n", entries


def test_a_stream_file_an_earlier_executor_linked_outside_is_refused(slurm_tes):
    tes, _files, _worker, cluster = slurm_tes
    outside = f"/tmp/caesar-tes-outside-{cluster['CAESAR_TEST_SLURM_UID']}"
    task = tes.run({
        "resources": {"backend_parameters": {"backend": "slurm"}},
        "volumes": ["/work"],
        "executors": [{"image": APPS, "command": ["ln", "-s", outside, "/work/out"]},
                      {"image": BUSYBOX, "command": ["echo", "escaped"], "stdout": "/work/out"}]}, timeout=240)
    assert task["state"] == "SYSTEM_ERROR", (task["logs"][-1]["logs"], task["logs"][-1]["system_logs"])
    log = task["logs"][-1]
    assert any("stdout /work/out leads outside the task's directories" in line for line in log["system_logs"]), log
    assert [e["exit_code"] for e in log["logs"]] == [0, 125], log["logs"]
    assert not os.path.lexists(outside)          # the node is this machine: nothing was written there


def test_the_time_limit_of_a_task_of_several_executors_counts_for_all_of_them(slurm_tes):
    tes, _files, _worker, _cluster = slurm_tes
    task = tes.run({
        "resources": {"backend_parameters": {"backend": "slurm", "time_limit": "10"}},
        "executors": [{"image": BUSYBOX, "command": ["sh", "-c", "sleep 4"]},
                      {"image": BUSYBOX, "command": ["sh", "-c", "echo second; sleep 300"]},
                      {"image": BUSYBOX, "command": ["true"]}]}, timeout=120)
    log = task["logs"][-1]
    assert task["state"] == "EXECUTOR_ERROR", (task["state"], log["system_logs"])
    assert any("exceeded the task's time limit of 10 s" in line for line in log["system_logs"]), log["system_logs"]
    assert len(log["logs"]) == 2 and log["logs"][0]["exit_code"] == 0, log["logs"]
    wait_until(lambda: not job_processes(task["id"]), 30, "the stopped task's processes gone")
