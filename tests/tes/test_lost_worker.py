"""A worker killed mid-task: its executor dies with it and the reaper of the next worker ends the task as a
SYSTEM_ERROR with the reason (a task never stays RUNNING forever)."""
from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from caesar_rest import create_app
from caesar_rest.db import dispose_all

from ..support import embedded_settings, job_processes, start_worker, wait_until
from . import schema


def waiter(client):
    """wait(task_id, states, timeout): the task's FULL view (checked against the TES schema) once in states."""
    def task(task_id):
        r = client.get(f"/ga4gh/tes/v1/tasks/{task_id}", query_string={"view": "FULL"})
        schema.validate("tesTask", r.get_json())
        return r.get_json()

    def wait(task_id, states, timeout=30):
        deadline = time.time() + timeout
        while (current := task(task_id))["state"] not in states:
            assert time.time() < deadline, current
            time.sleep(0.1)
        return current
    return wait


def test_a_task_whose_worker_dies_ends_as_a_system_error(tmp_path):
    settings = embedded_settings(tmp_path / "var", STALE_AFTER=3, REAPER_INTERVAL=1, HEARTBEAT_INTERVAL=0.5,
                                 TES_HOST_RUNTIME=True)
    client = create_app(settings).test_client()
    wait = waiter(client)

    first = start_worker(settings, ["local"], tmp_path / "w1.log", concurrency=1)
    try:
        r = client.post("/ga4gh/tes/v1/tasks", json={"executors": [{"image": "alpine", "command": ["sleep", "300"]}]})
        task_id = r.get_json()["id"]
        wait(task_id, ("RUNNING",))
        assert job_processes(task_id)
    finally:
        first.stop(signal.SIGKILL)
    deadline = time.time() + 10
    while job_processes(task_id) and time.time() < deadline:       # it died with its worker
        time.sleep(0.1)
    assert not job_processes(task_id)
    second = start_worker(settings, ["local"], tmp_path / "w2.log", concurrency=1, beat=True)
    try:
        done = wait(task_id, ("SYSTEM_ERROR",), timeout=30)
    finally:
        second.stop()
        dispose_all()
    assert any("lost" in line.lower() for line in done["logs"][0]["system_logs"]), done


def test_a_task_that_asks_for_retries_runs_again_after_its_worker_dies(tmp_path):
    """resources.backend_parameters.retries (issue 15): the lost attempt is retried once by the next worker, in a
    fresh directory; the task ends COMPLETE with one TaskLog per attempt, the lost one saying why."""
    settings = embedded_settings(tmp_path / "var", STALE_AFTER=3, REAPER_INTERVAL=1, HEARTBEAT_INTERVAL=0.5,
                                 TES_HOST_RUNTIME=True)
    client = create_app(settings).test_client()
    wait = waiter(client)

    bad = client.post("/ga4gh/tes/v1/tasks", json={"executors": [{"image": "alpine", "command": ["true"]}],
                                                  "resources": {"backend_parameters": {"retries": "11"}}})
    assert bad.status_code == 400 and "retries" in bad.get_json()["message"]
    first = start_worker(settings, ["local"], tmp_path / "w1.log", concurrency=1)
    try:
        r = client.post("/ga4gh/tes/v1/tasks", json={
            "executors": [{"image": "alpine", "command": ["sh", "-c", "sleep 4; echo done"]}],
            "resources": {"backend_parameters": {"retries": "1"}}})
        task_id = r.get_json()["id"]
        wait(task_id, ("RUNNING",))
        assert job_processes(task_id)
    finally:
        first.stop(signal.SIGKILL)
    second = start_worker(settings, ["local"], tmp_path / "w2.log", concurrency=1, beat=True)
    try:
        done = wait(task_id, ("COMPLETE", "SYSTEM_ERROR", "EXECUTOR_ERROR"), timeout=60)
    finally:
        second.stop()
        dispose_all()
    assert done["state"] == "COMPLETE", json.dumps(done["logs"])
    lost, final = done["logs"]
    assert lost["metadata"]["reason"] == "lost" and lost["metadata"]["attempt"] == "1"
    assert "Job lost" in lost["system_logs"][0] and lost["start_time"] <= lost["end_time"] <= final["start_time"]
    assert final["logs"][0]["stdout"].strip() == "done", json.dumps(done["logs"])


class _StallFirst(BaseHTTPRequestHandler):
    """The first GET trickles for as long as its client holds on (a worker staging, then killed); later ones
    answer the file at once (the retry's staging)."""
    asked: ClassVar[list[float]] = []

    def log_message(self, *_args) -> None:
        pass

    def do_GET(self) -> None:
        self.asked.append(time.monotonic())
        body = b"staged input\n"
        first = len(self.asked) == 1
        self.send_response(200)
        self.send_header("Content-Length", str(10**6 if first else len(body)))
        self.end_headers()
        try:
            if not first:
                self.wfile.write(body)
                return
            for _ in range(1200):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass


@pytest.mark.parametrize("retries, ends", [(None, "SYSTEM_ERROR"), ("1", "COMPLETE")])
def test_a_worker_killed_while_staging_ends_the_task_once_or_retries_it(tmp_path, retries, ends):
    """Issue 15's drill, staging phase: the worker is SIGKILLed while it downloads a task's input. The task ends
    once (SYSTEM_ERROR, lost), or, when it asks for retries, runs again in a fresh directory and completes with
    the input staged whole; the executor never ran in the lost attempt."""
    _StallFirst.asked = []
    server = ThreadingHTTPServer(("127.0.0.2", 0), _StallFirst)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = embedded_settings(tmp_path / "var", STALE_AFTER=3, REAPER_INTERVAL=1, HEARTBEAT_INTERVAL=0.5,
                                 TES_HOST_RUNTIME=True, EGRESS_ALLOWED_NETWORKS=["127.0.0.2/32"])
    client = create_app(settings).test_client()
    wait = waiter(client)
    task: dict = {"inputs": [{"url": f"http://127.0.0.2:{server.server_port}/in.txt", "path": "/data/in.txt"}],
                  "executors": [{"image": "alpine", "command": ["cat", "/data/in.txt"]}]}
    if retries:
        task["resources"] = {"backend_parameters": {"retries": retries}}
    first = start_worker(settings, ["local"], tmp_path / "w1.log", concurrency=1)
    second = None
    try:
        task_id = client.post("/ga4gh/tes/v1/tasks", json=task).get_json()["id"]
        wait_until(lambda: _StallFirst.asked, 60, "the worker to start staging the input")
        assert wait(task_id, ("INITIALIZING",))["state"] == "INITIALIZING"      # staging, nothing run yet
        first.stop(signal.SIGKILL)
        second = start_worker(settings, ["local"], tmp_path / "w2.log", concurrency=1, beat=True)
        done = wait(task_id, ("COMPLETE", "SYSTEM_ERROR", "EXECUTOR_ERROR", "CANCELED"), timeout=60)
    finally:
        (second or first).stop()
        server.shutdown()
        dispose_all()
    assert done["state"] == ends, json.dumps(done["logs"])
    assert "Job lost" in done["logs"][0]["system_logs"][0], done["logs"]
    assert done["logs"][0].get("logs", []) == []                 # the lost attempt never ran its executor
    if retries:
        lost, final = done["logs"]
        assert lost["metadata"]["reason"] == "lost"
        assert final["logs"][0]["stdout"] == "staged input\n"
        assert len(_StallFirst.asked) == 2                      # staged again, once
    else:
        assert len(done["logs"]) == 1 and len(_StallFirst.asked) == 1
