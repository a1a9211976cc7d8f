"""Executors on the real worker: sequence, shared volumes, env, workdir, std streams, exit codes, ignore_error,
time limit, resources as limits; a task is a job in the same jobs table as the caesar-rest API."""
from __future__ import annotations

import time

import requests

from ..support import API


def test_executors_share_volumes_env_workdir_and_std_streams(tes, files):
    task = tes.run({
        "volumes": ["/shared"],
        "inputs": [{"path": "/data/words.txt", "content": "b\na\nc\n"}],
        "outputs": [{"path": "/shared/sorted.txt", "url": f"file://{files}/streams/sorted.txt"}],
        "executors": [
            {"image": "alpine", "command": ["sh", "-c", "echo $GREETING > /shared/greeting; pwd > where"],
             "env": {"GREETING": "hi there"}, "workdir": "/shared"},
            {"image": "alpine", "command": ["sort"], "stdin": "/data/words.txt", "stdout": "/shared/sorted.txt",
             "stderr": "/shared/err.txt"},
            {"image": "alpine", "command": ["cat", "/shared/greeting", "/shared/where", "/shared/sorted.txt"]},
            {"image": "alpine", "command": ["echo", "$HOME", "a  b", "*"]},     # argv as given: no shell
        ]})
    assert task["state"] == "COMPLETE", task["logs"][0]["system_logs"]
    logs = task["logs"][0]["logs"]
    assert [entry["exit_code"] for entry in logs] == [0, 0, 0, 0]
    assert logs[1]["stdout"] == "a\nb\nc\n"                     # the redirected file's content
    assert logs[2]["stdout"] == "hi there\n/shared\na\nb\nc\n"
    assert logs[3]["stdout"] == "$HOME a  b *\n"
    assert (files / "streams" / "sorted.txt").read_text() == "a\nb\nc\n"
    assert task["logs"][0]["outputs"] == [{"url": f"file://{files}/streams/sorted.txt", "path": "/shared/sorted.txt",
                                           "size_bytes": "6"}]
    assert all(e["start_time"] <= e["end_time"] for e in logs)


def test_a_failing_executor_ends_the_task_unless_ignore_error(tes):
    failed = tes.run({"executors": [{"image": "alpine", "command": ["sh", "-c", "echo bad input >&2; exit 3"]},
                                    {"image": "alpine", "command": ["echo", "never runs"]}]})
    assert failed["state"] == "EXECUTOR_ERROR"
    log = failed["logs"][0]
    assert [e["exit_code"] for e in log["logs"]] == [3]
    assert log["logs"][0]["stderr"] == "bad input\n"
    assert any("exited with status 3: bad input" in line for line in log["system_logs"])

    ignored = tes.run({"executors": [{"image": "alpine", "command": ["false"], "ignore_error": True},
                                     {"image": "alpine", "command": ["echo", "still here"]}]})
    assert ignored["state"] == "COMPLETE"
    assert [e["exit_code"] for e in ignored["logs"][0]["logs"]] == [1, 0]
    assert ignored["logs"][0]["logs"][1]["stdout"] == "still here\n"


def test_a_missing_command_is_an_executor_error(tes):
    task = tes.run({"executors": [{"image": "alpine", "command": ["no-such-program-here", "x"]}]})
    assert task["state"] == "EXECUTOR_ERROR"
    assert task["logs"][0]["logs"][0]["exit_code"] == 127
    assert "no-such-program-here: command not found" in task["logs"][0]["logs"][0]["stderr"]


def test_time_limit_stops_the_executor_as_an_executor_error(tes):
    started = time.time()
    task = tes.run({"executors": [{"image": "alpine", "command": ["sleep", "60"]}],
                    "resources": {"backend_parameters": {"time_limit": "1"}}}, timeout=30)
    assert task["state"] == "EXECUTOR_ERROR" and time.time() - started < 20
    assert task["logs"][0]["logs"][0]["exit_code"] in (128 + 15, 128 + 9)
    assert any("time limit of 1 s" in line for line in task["logs"][0]["system_logs"])
    job = requests.get(f"{tes.base.rsplit('/ga4gh', 1)[0]}{API}/job/{task['id']}/status", headers=tes.headers,
                       timeout=10).json()
    assert job["state"] == "TIMED-OUT"


def test_resources_become_backend_limits(tes):
    program = "import os; print(os.environ['OMP_NUM_THREADS'], flush=True); bytearray(600 * 2**20)"
    task = tes.run({"executors": [{"image": "python:3", "command": ["python3", "-c", program]}],
                    "resources": {"cpu_cores": 2, "ram_gb": 0.25}})
    assert task["state"] == "EXECUTOR_ERROR"
    log = task["logs"][0]["logs"][0]
    assert log["stdout"] == "2\n" and "MemoryError" in log["stderr"]

    greedy = tes.run({"executors": [{"image": "alpine", "command": ["true"]}], "resources": {"disk_gb": 10**7}})
    assert greedy["state"] == "SYSTEM_ERROR" and greedy["logs"][0]["logs"] == []
    assert any("disk_gb" in line for line in greedy["logs"][0]["system_logs"])


def test_inline_content_of_at_least_128_kib(tes):
    text = ("0123456789abcdef" * 64 + "\n") * 200                  # 205 KB
    task = tes.run({"inputs": [{"path": "/data/big.txt", "content": text}],
                    "executors": [{"image": "alpine", "command": ["wc", "-c", "/data/big.txt"]}]})
    assert task["state"] == "COMPLETE"
    assert task["logs"][0]["logs"][0]["stdout"].split()[0] == str(len(text))
    assert task["inputs"][0]["content"] == text and "content" not in tes.get(task["id"], "BASIC")["inputs"][0]


def test_a_task_is_a_job_in_the_same_jobs_table(tes):
    task = tes.run({"name": "as-a-job", "executors": [{"image": "busybox", "command": ["echo", "from tes"]}]})
    base = tes.base.rsplit("/ga4gh", 1)[0]
    listed = requests.get(f"{base}{API}/jobs", params={"app": "tes", "per_page": 1000}, headers=tes.headers,
                          timeout=10).json()
    assert task["id"] in [j["job_id"] for j in listed["jobs"]]
    meta = requests.get(f"{base}{API}/job/{task['id']}/metadata", headers=tes.headers, timeout=10).json()
    assert meta["kind"] == "tes" and meta["backend"] == "local" and meta["image"] == "busybox"
    assert [e["state"] for e in meta["events"]][:1] == ["PENDING"] and meta["state"] == "SUCCESS"
    logs = requests.get(f"{base}{API}/job/{task['id']}/logs", headers=tes.headers, timeout=10).json()
    assert logs["stdout"] == "from tes\n"


def test_task_documents_beyond_the_json_limit_are_accepted_up_to_their_own(tes):
    text = "x" * (900 * 1024) + "\n"
    task = tes.run({"inputs": [{"path": f"/data/part{i}.txt", "content": text} for i in range(2)],   # 1.8 MB
                    "executors": [{"image": "alpine", "command": ["sh", "-c", "cat /data/part*.txt | wc -c"]}]})
    assert task["state"] == "COMPLETE" and task["logs"][0]["logs"][0]["stdout"].strip() == str(2 * len(text))
    r = tes.call("POST", "/tasks", json={"inputs": [{"path": "/d/x", "content": "y" * 1024 * 1024}] * 17,
                                         "executors": [{"image": "alpine", "command": ["true"]}]})
    assert r.status_code == 413
