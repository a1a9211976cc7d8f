"""Retries with real processes (issue 15): an app that retries lost attempts, its worker SIGKILLed mid-job; the
next worker's reaper finds the dead worker, the attempt is recorded, and a fresh attempt runs to SUCCESS, once."""
from __future__ import annotations

import os
import signal
import time

import requests

from workers.backends.local import process_alive

from .support import (
    API,
    RETRYING_SLEEPER,
    embedded_settings,
    http_status,
    start_api,
    start_worker,
    wait_state,
    write_apps,
)


def test_an_attempt_whose_worker_was_killed_runs_again_once(tmp_path):
    apps = write_apps(tmp_path / "apps", {"sleeper-retry": RETRYING_SLEEPER})
    settings = embedded_settings(tmp_path / "var", APPS_DIR=str(apps), STALE_AFTER=20)
    api, base = start_api(settings, tmp_path / "api.log")
    worker = start_worker(settings, ["local"], tmp_path / "worker.log", concurrency=1, beat=True)
    second = None
    try:
        job_id = requests.post(f"{base}{API}/job", json={"app": "sleeper-retry", "job_inputs": {"seconds": 6}},
                               timeout=10).json()["job_id"]
        first_pid = int(wait_state(http_status(base), job_id, ["RUNNING"], timeout=60)["pid"])
        os.killpg(worker.pid, signal.SIGKILL)         # the pool and the job's worker process, no goodbye
        worker.stop()
        second = start_worker(settings, ["local"], tmp_path / "worker2.log", concurrency=1, beat=True)
        st = wait_state(http_status(base), job_id, timeout=90)
        assert st["state"] == "SUCCESS", st
        meta = requests.get(f"{base}{API}/job/{job_id}/metadata", timeout=10).json()
        assert meta["attempts"] == 2
        lost, = meta["retries"]["previous_attempts"]
        assert lost["reason"] == "lost" and lost["attempt"] == 1 and "Job lost" in lost["status"]
        assert [e["state"] for e in meta["events"]].count("RUNNING") == 2
        assert any("Attempt 1 ended (lost)" in e["message"] for e in meta["events"])
        deadline = time.time() + 10
        while process_alive(first_pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not process_alive(first_pid)           # the first attempt's process did not live on beside it
    finally:
        (second or worker).stop()
        api.stop()
