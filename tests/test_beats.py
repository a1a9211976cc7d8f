"""celery beat on every host (issue 18, several hosts): the scheduled reaper takes a turn in the database (the marks
table), so two beats run it about once per REAPER_INTERVAL between them, not twice as often; and when the host
whose pool ran a job dies with its beat, the other host's beat and control worker still settle the job. Before,
a deployment had to run exactly one beat, a single point of failure: two beats ran the reaper twice per interval."""
from __future__ import annotations

import os
import re
import signal
import time

import requests

from .support import (
    API,
    create_pg_database,
    drop_pg_database,
    http_status,
    production_settings,
    start_api,
    start_celery_worker,
    start_worker,
    wait_state,
)


def _runs(log: str) -> tuple[int, int]:
    """(reaper runs that went ahead, runs skipped for another beat's turn) in a control worker's log."""
    done = re.findall(r"Task caesar\.reap\[[^\]]+\] succeeded in [0-9.]+s: (\{.*)", log)
    skipped = sum(1 for d in done if "'skipped'" in d)
    return len(done) - skipped, skipped


def test_two_beats_share_the_reaper_and_survive_one_host(tmp_path):
    db = create_pg_database()
    settings = production_settings(tmp_path / "var", db, STALE_AFTER=6, HEARTBEAT_INTERVAL=0.5, REAPER_INTERVAL=1)
    api, base = start_api(settings, tmp_path / "api.log")
    host_a = start_worker(settings, ["local"], tmp_path / "a.log", concurrency=1, beat=True, name="hostA")
    # Host B: a control worker with its beat, and a ROOT of its own (its beat's schedule file is its own too).
    (tmp_path / "hostB").mkdir()
    host_b = start_celery_worker({**settings, "ROOT": str(tmp_path / "hostB")}, ["control"],
                                 tmp_path / "b.control.log", 1, True, "control-hostB")
    try:
        t0 = time.monotonic()
        time.sleep(8)
        elapsed = time.monotonic() - t0
        ran_a, skipped_a = _runs(host_a.companions[0].log())
        ran_b, skipped_b = _runs(host_b.log())
        ran, skipped = ran_a + ran_b, skipped_a + skipped_b
        # Two beats each send a reap a second; about one a second goes ahead (a turn is 0.8 s at least).
        assert ran <= elapsed / 0.8 + 2, (ran, skipped, elapsed)
        assert skipped >= elapsed / 2 - 2, (ran, skipped, elapsed)
        assert ran >= elapsed / 2 - 2, (ran, skipped, elapsed)

        job_id = requests.post(f"{base}{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 60}},
                               timeout=10).json()["job_id"]
        wait_state(http_status(base), job_id, ["RUNNING"], timeout=60)
        ran_b_at_kill = _runs(host_b.log())[0]
        # Host A dies whole: its pool, the job's process with it, and its control worker with its beat.
        for proc in (host_a, *host_a.companions):
            os.killpg(proc.pid, signal.SIGKILL)
        st = wait_state(http_status(base), job_id, timeout=60)
        assert st["state"] == "FAILURE" and "Job lost" in st["status"], st
        assert _runs(host_b.log())[0] > ran_b_at_kill          # host B's beat and reaper went on alone
    finally:
        host_a.stop()
        host_b.stop()
        api.stop()
        drop_pg_database(db)
