"""`caesar-rest run` (what `make run` starts, README's first command): the API, a pool worker and the control
worker with the reaper, on the embedded default; a job runs end to end, the reaper runs on its own process while
the pool's slots are busy, and Ctrl-C stops all three."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import requests

from ..support import API, REPO, free_port, http_status, wait_state, wait_until


def test_caesar_rest_run_serves_runs_reaps_and_stops(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAESAR_")}
    env.update(CAESAR_ROOT=str(tmp_path / "var"), CAESAR_REAPER_INTERVAL="1", CAESAR_JOB_POLL_INTERVAL="0.1")
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115 (closed below, after the process)
    proc = subprocess.Popen([sys.executable, "-m", "caesar_rest.cli", "run", "--port", str(port),
                             "--concurrency", "1"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        def healthy() -> bool:
            try:
                return requests.get(f"{base}/health", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(healthy, 90, "the API and the worker to be up")
        long_job = requests.post(f"{base}{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 8}},
                                 timeout=10).json()["job_id"]
        wait_state(http_status(base), long_job, ["RUNNING"], timeout=60)
        text = lambda: (tmp_path / "run.log").read_text(errors="replace")
        seen = text().count("Task caesar.reap[")
        # The pool's only slot is busy: the reaper still runs (its own worker, its own queue).
        wait_until(lambda: text().count("succeeded") and text().count("Task caesar.reap[") > seen + 2, 30,
                   "reaper runs while the pool's one slot runs the long job")
        assert http_status(base)(long_job)["state"] == "RUNNING"
        assert wait_state(http_status(base), long_job, timeout=60)["state"] == "SUCCESS"
    finally:
        os.killpg(proc.pid, signal.SIGINT) if proc.poll() is None else None
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
    assert code == 0 and "caesar-rest: stopped" in (tmp_path / "run.log").read_text()
