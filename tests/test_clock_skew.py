"""A worker host whose clock is five minutes behind (tests/skewed_clock: the pool's interpreters read a wall clock
moved by time-machine), on PostgreSQL, its jobs
judged by a reaper on a host whose clock is right (issue 18, several hosts). Every host stamps and judges time on
the database server's clock (caesar_rest/clock.py), so the job's heartbeats are fresh and it runs to SUCCESS.
Before, the worker wrote heartbeats five minutes old and the reaper declared the healthy job lost within
STALE_AFTER (FAILURE "Job lost")."""
from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from caesar_rest import clock
from caesar_rest.db import dispose_all, session_scope

from .support import (
    API,
    REPO,
    create_pg_database,
    drop_pg_database,
    http_status,
    production_settings,
    start_api,
    start_worker,
    wait_state,
)

SKEW = 300
SHIM = Path(__file__).parent / "skewed_clock"


@pytest.fixture
def pg_url():
    url = create_pg_database()
    try:
        yield url
    finally:
        dispose_all()
        drop_pg_database(url)


def test_a_worker_host_minutes_behind_keeps_its_jobs(tmp_path, pg_url):
    settings = production_settings(tmp_path / "var", pg_url, STALE_AFTER=5, HEARTBEAT_INTERVAL=0.5,
                                   REAPER_INTERVAL=1)
    api, base = start_api(settings, tmp_path / "api.log")
    # The pool runs SKEW seconds in the past; its control worker (the reaper, on the beat) on the right time.
    worker = start_worker(settings, ["local"], tmp_path / "worker.log", concurrency=1, beat=True,
                          wrap=["env", f"PYTHONPATH={SHIM}:{REPO}", f"CAESAR_TEST_CLOCK_SKEW=-{SKEW}"])
    try:
        job_id = requests.post(f"{base}{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 8}},
                               timeout=10).json()["job_id"]
        wait_state(http_status(base), job_id, ["RUNNING"], timeout=60)
        st = wait_state(http_status(base), job_id, timeout=90)
        meta = requests.get(f"{base}{API}/job/{job_id}/metadata", timeout=10).json()
        assert st["state"] == "SUCCESS", (st, meta["events"])
        assert meta["attempts"] == 1 and not any("lost" in e["message"].lower() for e in meta["events"])
        stamps = [e["at"] for e in meta["events"]]
        assert stamps == sorted(stamps), meta["events"]     # the worker's stamps on the API's clock, in order
        # The skew was real, and measured: the worker's log says so.
        said = re.findall(r"this host's clock is ([0-9.]+) s behind the database server's", worker.log())
        assert said and all(abs(float(x) - SKEW) < 5 for x in said), worker.log()[-3000:]
        assert 7 < float(st["elapsed_time"]) < 30          # stamped on one clock: not minutes
    finally:
        worker.stop()
        api.stop()


def test_the_offset_is_measured_on_each_new_connection_and_small_moves_are_left(pg_url, monkeypatch):
    """In-process: this host's clock shifted by a stand-in time.time (the real one cannot move here) is set right
    by a new PostgreSQL connection's measure; a change under MIN_STEP leaves the offset alone."""
    import time as real_time

    from caesar_rest import db, models

    real = real_time.time
    monkeypatch.setattr(clock, "_offset", 0.0)
    monkeypatch.setattr(clock.time, "time", lambda: real() + 120.0)      # this "host" runs two minutes ahead
    dispose_all()
    with session_scope(pg_url) as s:
        server = s.scalar(text("SELECT now() AT TIME ZONE 'UTC'"))
        assert abs(clock.offset() + 120.0) < 1.0
        assert abs((models.utcnow() - server).total_seconds()) < 1.0
    before = clock.offset()
    raw = db.engine_for(pg_url).raw_connection()
    try:
        monkeypatch.setattr(clock.time, "time", lambda: real() + 120.0 + clock.MIN_STEP / 5)
        clock.learn(raw.driver_connection)
        assert clock.offset() == before                   # jitter: unchanged
        monkeypatch.setattr(clock.time, "time", lambda: real() - 30.0)
        clock.learn(raw.driver_connection)
        assert abs(clock.offset() - 30.0) < 1.0          # a real move: taken
    finally:
        raw.close()
    assert models.utcnow() - server < timedelta(seconds=5)
