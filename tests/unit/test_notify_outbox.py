"""The outbox, in-process on the embedded database (SQLite): a transition writes its deliveries in its own
transaction, a rolled-back change leaves none and hands nothing to the broker, a committed one is handed over
only once committed, and a job without subscriptions costs its transitions no query for them."""
from __future__ import annotations

import pytest
from sqlalchemy import event, func, select

from caesar_rest import notify
from caesar_rest.db import engine_for, session_scope
from caesar_rest.models import DELIVERIES, Job
from caesar_rest.states import RUNNING, STARTED, transition

API = "/caesar/api/v1.0"


@pytest.fixture
def published(app, monkeypatch):
    """The delivery ids handed to the broker, each with how many deliveries a fresh session saw at that moment."""
    url = app.config["DATABASE_URL"]
    seen: list[tuple[list[int], int]] = []

    def publish(ids):
        with session_scope(url) as s:
            seen.append((list(ids), s.scalar(select(func.count()).select_from(DELIVERIES)) or 0))

    monkeypatch.setitem(notify._publishers, notify._key(url), publish)
    return seen


def _submit(client, **extra) -> str:
    r = client.post(f"{API}/job", json={"app": "sleeper", **extra})
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def _count(url: str) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(DELIVERIES)) or 0


def test_a_rolled_back_change_notifies_nobody_and_a_committed_one_is_handed_over_after_its_commit(app, client,
                                                                                                 published):
    url = app.config["DATABASE_URL"]
    job_id = _submit(client, notify={"url": "https://hooks.example.org/x", "events": ["changed"]})

    def change_then_fail() -> None:
        with session_scope(url) as s:
            assert transition(s, job_id, STARTED, "claimed")
            assert s.scalar(select(func.count()).select_from(DELIVERIES)) == 1     # written with the change ...
            raise RuntimeError("the change rolls back")

    with pytest.raises(RuntimeError):
        change_then_fail()
    assert _count(url) == 0 and published == []                               # ... and gone with it
    with session_scope(url) as s:
        assert s.get(Job, job_id).state == "PENDING"
        assert transition(s, job_id, STARTED, "claimed")
        assert published == []                                                  # not before the commit
    assert len(published) == 1 and published[0][1] == 1                        # committed when handed over
    with session_scope(url) as s:
        row = s.execute(select(DELIVERIES).where(DELIVERIES.c.id == published[0][0][0])).one()
    assert (row.event, row.job_state, row.state, row.attempts) == ("changed", "STARTED", "pending", 0)
    assert row.payload["state"] == "STARTED" and row.payload["status"] == "claimed"   # the job as it just became
    metrics = client.get("/metrics").get_data(as_text=True).splitlines()
    assert 'caesar_notifications{state="pending"} 1' in metrics and "caesar_notifications_overdue 0" in metrics


def test_only_the_asked_events_are_written(app, client, published):
    url = app.config["DATABASE_URL"]
    job_id = _submit(client, notify=[{"url": "https://a.example.org/", "events": ["finished"]},
                                     {"url": "https://b.example.org/", "events": ["started"], "format": "tes"}])
    with session_scope(url) as s:
        transition(s, job_id, STARTED, "claimed")
    assert published == []                                  # neither asked for STARTED
    with session_scope(url) as s:
        transition(s, job_id, RUNNING, "running")
    (ids, _), = published
    with session_scope(url) as s:
        row = s.execute(select(DELIVERIES).where(DELIVERIES.c.id.in_(ids))).one()
    assert row.event == "started" and row.payload["task"]["state"] == "RUNNING"        # the tes format


def test_a_job_without_subscriptions_costs_its_transitions_no_query_for_them(app, client, published):
    url = app.config["DATABASE_URL"]
    job_id = _submit(client)
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    engine = engine_for(url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        with session_scope(url) as s:
            transition(s, job_id, STARTED, "claimed")
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert statements and not any("notify_" in st for st in statements), statements
    assert published == []
