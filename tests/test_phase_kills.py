"""Issue 15's drill: a worker SIGKILLed in each phase of a remote job (submitting, fetching its outputs, removing
the backend's copy), then another worker. The job ends once, with a reason; never doubled, never SUCCESS without
its outputs. Real worker processes, RabbitMQ (a dead worker's unacknowledged message comes back), the reaper; the
remote peer is a stand-in that stops at the chosen phase (tests/backends/phase_backend.py says why)."""
from __future__ import annotations

import json
import os
import secrets
import signal
from pathlib import Path

import pytest

from caesar_rest import create_app
from caesar_rest.db import dispose_all

from .support import API, RABBIT, client_status, embedded_settings, start_worker, wait_state, wait_until, write_apps

PHASE_APP = """
name: phase-app
version: "1"
command: [caesar-sleeper]
backends: [phase]
default_backend: phase
outputs: [result.txt]
options:
  seconds: {type: float, default: 0}
"""
RETRYING = PHASE_APP.replace("name: phase-app", "name: phase-retry") + "retries: {max: 1, on: [lost]}\n"


def stack(tmp_path: Path, stop_in: str):
    state = tmp_path / "phase"
    apps = write_apps(tmp_path / "apps", {"phase-app": PHASE_APP, "phase-retry": RETRYING})
    settings = embedded_settings(tmp_path / "var", APPS_DIR=str(apps), BROKER_URL=RABBIT,
                                 QUEUE_PREFIX=f"t{secrets.token_hex(4)}.", STALE_AFTER=3, REAPER_INTERVAL=1,
                                 HEARTBEAT_INTERVAL=0.5, REMOTE_POLL_INTERVAL=0.3,
                                 BACKENDS={"local": {}, "phase": {"class": "tests.backends.phase_backend:PhaseBackend",
                                                                  "state_dir": str(state), "stop_in": stop_in}})
    return settings, create_app(settings).test_client(), state


def kill_in(tmp_path: Path, stop_in: str, app: str = "phase-app") -> tuple[dict, dict, Path, str]:
    """Submit, wait until the worker stops in `stop_in`, SIGKILL it, start another (with the reaper); the job's
    end, its metadata, the stand-in's state directory and the job id."""
    settings, client, state = stack(tmp_path, stop_in)
    first = start_worker(settings, ["phase"], tmp_path / "w1.log", concurrency=1)
    second = None
    try:
        job_id = client.post(f"{API}/job", json={"app": app}).get_json()["job_id"]
        wait_until(lambda: list(state.glob(f"*/in-{stop_in}")), 60, f"the worker to stop in {stop_in}")
        os.killpg(first.pid, signal.SIGKILL)
        first.stop()
        second = start_worker(settings, ["phase"], tmp_path / "w2.log", concurrency=1, beat=True)
        st = wait_state(client_status(client), job_id, timeout=90)
        meta = client.get(f"{API}/job/{job_id}/metadata").get_json()
        return st, meta, state, job_id
    finally:
        (second or first).stop()
        dispose_all()


def calls(state: Path, job_id: str, handle: str | None, call: str) -> int:
    for where in (state / job_id, state / (handle or "-")):
        counter = where / f"calls-{call}"
        if counter.exists():
            return int(counter.read_text())
    return 0


def running_events(meta: dict) -> int:
    return [e["state"] for e in meta["events"]].count("RUNNING")


def test_killed_while_fetching_outputs_the_next_worker_fetches_them_once_more(tmp_path):
    st, meta, state, job_id = kill_in(tmp_path, "fetch")
    assert st["state"] == "SUCCESS", st
    handle = meta["handle"]
    result = {o["path"] for o in meta["outputs"]}
    assert "result.txt" in result                                   # never SUCCESS without its outputs
    assert calls(state, job_id, handle, "submit") == 1 and running_events(meta) == 1 and meta["attempts"] == 1
    assert calls(state, job_id, handle, "fetch") == 2 and (state / handle / "cleaned").exists()


@pytest.mark.parametrize("app, ends", [("phase-app", "FAILURE"), ("phase-retry", "SUCCESS")])
def test_killed_while_submitting_the_job_ends_once_or_is_retried_when_asked(tmp_path, app, ends):
    st, meta, state, job_id = kill_in(tmp_path, "submit", app)
    assert st["state"] == ends, st
    if ends == "FAILURE":
        assert "Job lost" in st["status"] and calls(state, job_id, None, "submit") == 1
        assert meta["attempts"] == 1 and running_events(meta) == 0
    else:
        lost, = meta["retries"]["previous_attempts"]
        assert lost["reason"] == "lost" and meta["attempts"] == 2
        assert calls(state, job_id, None, "submit") == 2 and running_events(meta) == 1
        assert "result.txt" in {o["path"] for o in meta["outputs"]}


def test_killed_while_removing_the_backends_copy_the_job_stays_done(tmp_path):
    st, meta, state, job_id = kill_in(tmp_path, "cleanup")
    assert st["state"] == "SUCCESS" and "result.txt" in {o["path"] for o in meta["outputs"]}
    handle = meta["handle"]
    fetched = json.loads((tmp_path / "var" / "jobs").glob(f"*/{job_id}/result.txt").__next__().read_text())
    assert fetched == {"fetched_on_call": 1} and calls(state, job_id, handle, "fetch") == 1
    assert running_events(meta) == 1 and meta["attempts"] == 1
