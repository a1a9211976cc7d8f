"""The reaper's run is bounded (issue 18, scale): a backlog larger than a run's batch is republished over the next
runs, oldest first and each job once a period; more lost jobs than a run's batch are declared lost over the next
runs; each run folds the job counts /metrics reads. Real Runner, real SQLite, stand-in backends."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from caesar_rest.db import session_scope
from caesar_rest.models import JOB_COUNTS, Job, utcnow
from workers import lost
from workers.runner import reap

from .test_runner_standins import submit


def _reap(settings, published: list[str]) -> dict:
    return reap(settings, publish=lambda job_id, _b: published.append(job_id), follow=lambda *a: None,
                view=lambda: None)


def test_a_backlog_larger_than_the_batch_goes_out_over_the_next_runs_oldest_first(standin_app, standin_client,
                                                                                   monkeypatch):
    monkeypatch.setattr(lost, "REPUBLISH_BATCH", 3)
    settings = {**standin_app.config, "PENDING_REPUBLISH_AFTER": 60}
    ids = [submit(standin_client, "exit0") for _ in range(7)]
    with session_scope(settings["DATABASE_URL"]) as s:     # ids[0] the oldest, an hour ago; one a minute after
        for k, job_id in enumerate(ids):
            s.execute(update(Job).where(Job.id == job_id)
                      .values(submit_date=utcnow() - timedelta(seconds=3600 - 60 * k)))
    published: list[str] = []
    counts = [_reap(settings, published)["republished"] for _ in range(4)]
    assert counts == [3, 3, 1, 0]
    assert published == ids                                  # oldest first, each once


def test_more_lost_jobs_than_the_batch_are_declared_lost_over_the_next_runs(standin_app, standin_client,
                                                                            monkeypatch):
    monkeypatch.setattr(lost, "LOST_BATCH", 2)
    settings = {**standin_app.config, "REAPER_DB_GRACE": 0}
    ids = [submit(standin_client, "exit0") for _ in range(5)]
    with session_scope(settings["DATABASE_URL"]) as s:     # claimed by a worker that stopped beating an hour ago
        s.execute(update(Job).where(Job.id.in_(ids)).values(state="STARTED", attempts=1, host="elsewhere",
                                                            heartbeat_at=utcnow() - timedelta(hours=1)))
    published: list[str] = []
    assert [_reap(settings, published)["lost"] for _ in range(4)] == [2, 2, 1, 0]
    with session_scope(settings["DATABASE_URL"]) as s:
        assert set(s.scalars(select(Job.state).where(Job.id.in_(ids)))) == {"FAILURE"}


def test_each_run_folds_the_job_counts(standin_app, standin_client):
    for _ in range(3):
        submit(standin_client, "exit0")
    result = _reap(standin_app.config, [])
    with session_scope(standin_app.config["DATABASE_URL"]) as s:
        rows = s.execute(select(JOB_COUNTS.c.state, JOB_COUNTS.c.n).where(JOB_COUNTS.c.n != 0)).all()
    assert rows == [("PENDING", 3)]
    assert result["job_counts_rows"] == 0          # SQLite keeps one row per key: nothing to fold
