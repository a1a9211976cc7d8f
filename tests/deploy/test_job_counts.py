"""The job counts the database keeps for /metrics (migration 0009), on SQLite and PostgreSQL: right after inserts,
every kind of transition, direct UPDATEs, deletes, bulk loads and rollbacks; folded without loss while writers
run; the jobs that were there before the migration counted once. The truth they are held to is a GROUP BY over
the jobs table, the query a scrape no longer makes."""
from __future__ import annotations

import random
import threading
import uuid
from datetime import timedelta

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import case, delete, func, insert, select, text, update

from caesar_rest import create_app, db, metrics
from caesar_rest.models import DURATION_BUCKETS, JOB_COUNTS, JOBS, TERMINAL_STATES, Job, utcnow
from caesar_rest.states import FAILURE, PENDING, RUNNING, STARTED, SUCCESS, NewJob, insert_job, transition

from ..support import create_pg_database, drop_pg_database, embedded_settings

MIGRATIONS = str(db.Path(db.__file__).parent / "migrations")


@pytest.fixture(params=["sqlite", "postgresql"])
def dialect(request):
    return request.param


@pytest.fixture
def database(dialect, tmp_path):
    """A fresh database of the dialect (no schema yet)."""
    url = create_pg_database() if dialect == "postgresql" else f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    yield url
    db.dispose_all()
    if dialect == "postgresql":
        drop_pg_database(url)


@pytest.fixture
def app(database, tmp_path):
    app = create_app(embedded_settings(tmp_path / "var", DATABASE_URL=database))
    yield app
    db.dispose_all()


def truth(url: str) -> dict:
    """{(app, backend, state): (n, timed, elapsed sum, *buckets)} from the jobs table itself."""
    timed = Job.state.in_(TERMINAL_STATES) & Job.elapsed.is_not(None)
    columns = [func.count(), func.sum(case((timed, 1), else_=0)), func.sum(case((timed, Job.elapsed), else_=0.0)),
               *(func.sum(case((timed & (Job.elapsed <= b), 1), else_=0)) for b in DURATION_BUCKETS)]
    with db.session_scope(url) as s:
        rows = s.execute(select(Job.app, Job.backend, Job.state, *columns)
                         .group_by(Job.app, Job.backend, Job.state)).all()
    return {(a, b, st): _rounded(values) for a, b, st, *values in rows}


def counted(url: str) -> dict:
    """The same from job_counts, as a scrape reads it (keys whose jobs are all gone left out)."""
    c = JOB_COUNTS.c
    sums = [func.sum(col) for col in list(c)[3:]]
    with db.session_scope(url) as s:
        rows = s.execute(select(c.app, c.backend, c.state, *sums).group_by(c.app, c.backend, c.state)).all()
    return {(a, b, st): _rounded(values) for a, b, st, *values in rows if values[0]}


def _rounded(values) -> tuple:
    return tuple(round(float(v or 0), 6) for v in values)


def new_job(app_name: str = "a1", backend: str = "local") -> NewJob:
    return NewJob(owner="alice", kind="app", app=app_name, app_version="1", backend=backend,
                  workdir_root="/nonexistent", argv=[], spec={})


def submit(url: str, n: int = 1, app_name: str = "a1", backend: str = "local") -> list[str]:
    ids = []
    with db.session_scope(url) as s:
        for _ in range(n):
            ids.append(insert_job(s, new_job(app_name, backend)).id)
    return ids


def move(url: str, job_id: str, *steps: tuple[str, dict]) -> None:
    for state, fields in steps:
        with db.session_scope(url) as s:
            assert transition(s, job_id, state, f"to {state}", **fields)


def scrape(client) -> set[str]:
    r = client.get("/metrics")
    assert r.status_code == 200
    return set(r.get_data(as_text=True).splitlines())


def test_counts_follow_inserts_transitions_updates_and_deletes(app, database):
    client = app.test_client()
    ids = submit(database, 5)
    assert counted(database) == truth(database) == {("a1", "local", "PENDING"): _rounded([5, 0, 0] + [0] * 9)}
    assert 'caesar_jobs{app="a1",backend="local",state="PENDING"} 5' in scrape(client)

    move(database, ids[0], (STARTED, {}), (RUNNING, {}), (SUCCESS, {"elapsed": 3.5}))
    move(database, ids[1], (STARTED, {}), (RUNNING, {}), (FAILURE, {"elapsed": 700.0}))
    move(database, ids[2], (STARTED, {}), (RUNNING, {}), (PENDING, {}))          # a retry goes back
    move(database, ids[3], (STARTED, {}))
    assert counted(database) == truth(database)
    lines = scrape(client)
    for state, n in (("PENDING", 2), ("STARTED", 1), ("RUNNING", 0), ("SUCCESS", 1), ("FAILURE", 1)):
        assert f'caesar_jobs{{app="a1",backend="local",state="{state}"}} {n}' in lines
    assert 'caesar_job_duration_seconds_count{app="a1",backend="local"} 2' in lines
    assert 'caesar_job_duration_seconds_sum{app="a1",backend="local"} 703.5' in lines
    assert 'caesar_job_duration_seconds_bucket{app="a1",backend="local",le="5"} 1' in lines
    assert 'caesar_job_duration_seconds_bucket{app="a1",backend="local",le="900"} 2' in lines

    # Writers outside the state machine are counted too: an UPDATE of any of the counted columns, a DELETE.
    with db.session_scope(database) as s:
        s.execute(update(Job).where(Job.id == ids[0]).values(elapsed=10.0))            # SUCCESS, re-timed
        s.execute(update(Job).where(Job.id == ids[4]).values(app="a2", backend="other"))
        s.execute(update(Job).where(Job.id == ids[3]).values(heartbeat_at=utcnow()))   # counts nothing
    assert counted(database) == truth(database)
    with db.session_scope(database) as s:
        s.execute(delete(Job).where(Job.id.in_([ids[1], ids[4]])))
    assert counted(database) == truth(database)
    lines = scrape(client)
    assert 'caesar_jobs{app="a1",backend="local",state="FAILURE"} 0' in lines
    assert not any('app="a2"' in line for line in lines)           # every job of the pair gone: no series
    assert 'caesar_job_duration_seconds_sum{app="a1",backend="local"} 10' in lines


def test_a_rolled_back_change_counts_nothing_and_bulk_statements_count_every_row(app, database):
    ids = submit(database, 3)
    before = counted(database)
    def failing_request() -> None:
        with db.session_scope(database) as s:
            transition(s, ids[0], STARTED, "claimed")
            insert_job(s, new_job("a3"))
            raise RuntimeError("the request failed after its writes")

    with pytest.raises(RuntimeError):
        failing_request()
    assert counted(database) == before == truth(database)

    now = utcnow()
    rows = [{"id": str(uuid.uuid4()), "owner": "bob", "kind": "app", "app": f"bulk{k % 3}", "app_version": "1",
             "backend": "local", "job_inputs": {}, "argv": [], "spec": {}, "workdir": "/nonexistent",
             "state": (SUCCESS, FAILURE, PENDING)[k % 3], "status": "", "submit_date": now - timedelta(seconds=k),
             "elapsed": None if k % 3 == 2 else float(k), "extra": {}} for k in range(3000)]
    with db.session_scope(database) as s:
        s.execute(insert(JOBS), rows)                      # multi-row INSERTs (insertmanyvalues)
    assert counted(database) == truth(database)
    with db.session_scope(database) as s:
        s.execute(update(Job).where(Job.app == "bulk0").values(state=FAILURE))       # many rows, one statement
        s.execute(delete(Job).where(Job.app == "bulk2"))
    assert counted(database) == truth(database)
    assert counted(database)[("bulk1", "local", "FAILURE")][0] == 1000


def test_the_folding_loses_nothing_while_writers_run(app, database):
    """Four threads submit and move jobs through random paths (retries too) while a fifth folds the counts over and
    over: on PostgreSQL the deltas are appended and folded concurrently, and no transaction deadlocks on them."""
    errors: list[BaseException] = []
    stop = threading.Event()
    paths = [(STARTED, RUNNING, SUCCESS), (STARTED, RUNNING, PENDING, STARTED, RUNNING, FAILURE),
             (STARTED, FAILURE), (STARTED, RUNNING, PENDING)]

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(40):
                job_id, = submit(database, app_name=rng.choice(("w1", "w2")))
                for state in rng.choice(paths):
                    fields = {"elapsed": rng.uniform(0, 100)} if state in (SUCCESS, FAILURE) else {}
                    move(database, job_id, (state, fields))
        except BaseException as exc:
            errors.append(exc)

    def folder() -> None:
        try:
            while not stop.is_set():
                metrics.compact_job_counts(database)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    folding = threading.Thread(target=folder)
    folding.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    folding.join()
    assert not errors, errors
    assert counted(database) == truth(database)
    assert sum(v[0] for v in counted(database).values()) == 160
    metrics.compact_job_counts(database)
    assert counted(database) == truth(database)
    with db.session_scope(database) as s:
        rows = s.scalar(select(func.count()).select_from(JOB_COUNTS))
    if database.startswith("postgresql"):
        assert rows == len(truth(database))       # one row per key with jobs, once folded
    else:
        assert rows <= 2 * 5                      # one row per key ever seen (two apps, five states reached)


def test_jobs_there_before_the_migration_are_counted_once(database, tmp_path):
    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    cfg.set_main_option("sqlalchemy.url", database)
    with db.engine_for(database).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0008")
    ids = submit(database, 4, app_name="old")
    move(database, ids[0], (STARTED, {}), (RUNNING, {}), (SUCCESS, {"elapsed": 20.0}))
    db.upgrade(database)
    assert counted(database) == truth(database)
    assert counted(database)[("old", "local", "PENDING")][0] == 3
    submit(database, 1, app_name="old")
    assert counted(database)[("old", "local", "PENDING")][0] == 4
    with db.engine_for(database).begin() as conn:     # and back: the table and its triggers go
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0008")
    with db.session_scope(database) as s:
        s.execute(text("DELETE FROM jobs"))
    db.upgrade(database)
    assert counted(database) == truth(database) == {}


def test_the_reaper_folds_the_deltas(app, database, dialect):
    from workers.runner import reap

    ids = submit(database, 4)
    for job_id in ids[:2]:
        move(database, job_id, (STARTED, {}), (RUNNING, {}), (SUCCESS, {"elapsed": 1.0}))
    with db.session_scope(database) as s:
        rows_before = s.scalar(select(func.count()).select_from(JOB_COUNTS))
    result = reap(app.config, publish=lambda *a: None, follow=lambda *a: None, view=lambda: None)
    assert counted(database) == truth(database)
    with db.session_scope(database) as s:
        rows_after = s.scalar(select(func.count()).select_from(JOB_COUNTS))
    if dialect == "postgresql":     # a row per delta (per INSERT statement, 2 per transition), then one per key
        assert rows_before == 4 + 2 * 6 and rows_after == result["job_counts_rows"] == 2
    else:                           # one per key seen (PENDING, STARTED, RUNNING, SUCCESS) all along
        assert rows_before == rows_after == 4 and result["job_counts_rows"] == 0


def test_notification_counts_follow_the_outbox(app, database):
    from caesar_rest.models import DELIVERIES, NOTIFY_COUNTS, SUBSCRIPTIONS

    def truth_by_state() -> dict[str, int]:
        with db.session_scope(database) as s:
            rows = s.execute(select(DELIVERIES.c.state, func.count()).group_by(DELIVERIES.c.state)).all()
        return {str(st): int(n) for st, n in rows}

    def counted_by_state() -> dict[str, int]:
        with db.session_scope(database) as s:
            rows = s.execute(select(NOTIFY_COUNTS.c.state, func.sum(NOTIFY_COUNTS.c.n))
                             .group_by(NOTIFY_COUNTS.c.state)).all()
        return {st: int(n) for st, n in rows if n}

    job_id, = submit(database)
    with db.session_scope(database) as s:
        s.execute(insert(SUBSCRIPTIONS), {"id": "sub1", "job_id": job_id, "url": "http://127.0.0.1:9/", "events": [],
                                          "format": "caesar", "created_at": utcnow()})
        s.execute(insert(DELIVERIES), [{"subscription_id": "sub1", "job_id": job_id, "event": "x",
                                        "job_state": "PENDING", "payload": {}, "state": "pending", "attempts": 0,
                                        "created_at": utcnow()} for _ in range(5)])
    assert counted_by_state() == truth_by_state() == {"pending": 5}
    with db.session_scope(database) as s:
        first, second, third, *_rest = s.scalars(select(DELIVERIES.c.id).order_by(DELIVERIES.c.id)).all()
        s.execute(update(DELIVERIES).where(DELIVERIES.c.id == first).values(state="delivered"))
        s.execute(update(DELIVERIES).where(DELIVERIES.c.id == second).values(state="failed"))
        s.execute(update(DELIVERIES).where(DELIVERIES.c.id == second).values(attempts=3))      # counts nothing
        s.execute(delete(DELIVERIES).where(DELIVERIES.c.id == third))
    assert counted_by_state() == truth_by_state() == {"pending": 2, "delivered": 1, "failed": 1}
    metrics.compact_job_counts(database)
    assert counted_by_state() == truth_by_state()
    lines = scrape(app.test_client())
    assert 'caesar_notifications{state="pending"} 2' in lines and 'caesar_notifications{state="failed"} 1' in lines
    with db.session_scope(database) as s:       # a job deleted takes its deliveries with it (ON DELETE CASCADE)
        s.execute(delete(Job).where(Job.id == job_id))
    assert counted_by_state() == truth_by_state() == {}
