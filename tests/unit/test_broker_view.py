"""The broker's view as a liveness signal (issue 15): a job whose heartbeat stopped, held by a worker the broker has
not seen for two heartbeat intervals, is lost well before STALE_AFTER; a worker that answers, or a missing view,
changes nothing. The view is given to reap() here (a set of node names, as a ping gives them); the real ping
against real workers is tests/test_faults.py::test_a_frozen_worker_on_another_host_is_found_by_the_broker_view."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from caesar_rest.db import session_scope
from caesar_rest.models import Job, Mark, utcnow
from caesar_rest.states import transition
from workers.runner import reap

from .test_liveness import marks
from .test_runner_standins import job_row, submit

QUIET = dict(publish=lambda *a: None, follow=lambda *a: None)


def held_elsewhere(app, job_id: str, node: str, beat_ago: float) -> None:
    """STARTED by a worker on another host (no pid check possible), its last heartbeat beat_ago seconds old."""
    at = utcnow() - timedelta(seconds=beat_ago)
    with session_scope(app.config["DATABASE_URL"]) as s:
        assert transition(s, job_id, "STARTED", "Worker far took the job", host="far.example", start_date=at,
                          heartbeat_at=at)
        s.execute(update(Job).where(Job.id == job_id).values(extra={"worker_pid": 1, "worker_node": node}))


def absent_marks(app) -> list[str]:
    with session_scope(app.config["DATABASE_URL"]) as s:
        return list(s.execute(select(Mark.name).where(Mark.name.like("absent:%"))).scalars())


def test_a_worker_gone_from_the_broker_loses_its_quiet_job_before_stale_after(standin_app, standin_client):
    settings = {**standin_app.config, "STALE_AFTER": 600, "HEARTBEAT_INTERVAL": 0.2, "REAPER_INTERVAL": 0.2}
    job_id = submit(standin_client, "exit0")
    held_elsewhere(standin_app, job_id, "w1@far", beat_ago=5)       # quiet for 5 s, far from STALE_AFTER
    marks(standin_app, reaper_seen=0.1, reaper_since=900)           # the reaper has had the database for long
    first = reap(settings, **QUIET, view=lambda: {"control@here"})
    assert first["lost"] == 0 and job_row(standin_app, job_id)[0]["state"] == "STARTED"   # missed once: a mark
    assert len(absent_marks(standin_app)) == 1
    with session_scope(settings["DATABASE_URL"]) as s:              # the first miss 1 s ago: two intervals past
        s.execute(update(Mark).where(Mark.name.like("absent:%")).values(at=utcnow() - timedelta(seconds=1)))
    waiting = submit(standin_client, "exit0")                     # PENDING: its message may be with that worker
    with session_scope(settings["DATABASE_URL"]) as s:
        s.execute(update(Job).where(Job.id == waiting).values(submit_date=utcnow() - timedelta(seconds=5)))
    published: list[str] = []
    hold = dict(publish=lambda j, _b: published.append(j), follow=lambda *a: None)
    assert reap(settings, **hold, view=lambda: {"control@here"})["lost"] == 1
    assert published == [waiting]                                 # published again when the worker is found gone
    row, _events = job_row(standin_app, job_id)
    assert row["state"] == "FAILURE"
    assert row["status"].startswith("Job lost: its worker is gone from the broker while it was STARTED")
    reap(settings, **hold, view=lambda: {"control@here"})
    assert absent_marks(standin_app) == []                          # no quiet job of that node any more
    assert published == [waiting]                                 # and once only (PENDING_REPUBLISH_AFTER)


def test_a_worker_the_broker_sees_keeps_its_job_and_its_mark_is_forgotten(standin_app, standin_client):
    settings = {**standin_app.config, "STALE_AFTER": 600, "HEARTBEAT_INTERVAL": 0.2}
    job_id = submit(standin_client, "exit0")
    held_elsewhere(standin_app, job_id, "w2@far", beat_ago=5)
    marks(standin_app, reaper_seen=0.1, reaper_since=900)
    reap(settings, **QUIET, view=lambda: {"control@here"})          # missed once
    with session_scope(settings["DATABASE_URL"]) as s:
        s.execute(update(Mark).where(Mark.name.like("absent:%")).values(at=utcnow() - timedelta(seconds=60)))
    assert reap(settings, **QUIET, view=lambda: {"w2@far", "control@here"})["lost"] == 0    # it answers now
    assert absent_marks(standin_app) == [] and job_row(standin_app, job_id)[0]["state"] == "STARTED"
    # Missed again: the count starts over, so one miss after an old one is not two in a row.
    assert reap(settings, **QUIET, view=lambda: {"control@here"})["lost"] == 0
    assert job_row(standin_app, job_id)[0]["state"] == "STARTED"


def test_no_view_or_a_fresh_heartbeat_or_the_database_grace_judge_nothing(standin_app, standin_client):
    settings = {**standin_app.config, "STALE_AFTER": 600, "HEARTBEAT_INTERVAL": 0.2}
    beating, quiet = submit(standin_client, "exit0"), submit(standin_client, "exit0")
    held_elsewhere(standin_app, beating, "w3@far", beat_ago=0)      # its worker beats: never judged by the view
    held_elsewhere(standin_app, quiet, "w3@far", beat_ago=5)
    marks(standin_app, reaper_seen=0.1, reaper_since=900)
    asked = []
    reap(settings, **QUIET, view=lambda: asked.append(1) or None)   # the broker down, or nobody answered
    assert asked == [1] and absent_marks(standin_app) == []
    marks(standin_app, reaper_seen=700, reaper_since=900)           # just back from a database gap: no judging,
    assert reap(settings, **QUIET, view=lambda: asked.append(2) or set())["lost"] == 0     # and no ping at all
    assert asked == [1]
    states = {job_row(standin_app, j)[0]["state"] for j in (beating, quiet)}
    assert states == {"STARTED"}
