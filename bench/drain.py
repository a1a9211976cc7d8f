"""Drain: N no-op jobs inserted PENDING and published with publish_run while the local pool consumes nothing
(Celery's cancel_consumer), then it consumes them all. Jobs a second from the first claim to the last end
(database times), the pool's CPU per job, and every job checked: all SUCCESS (none lost), attempts == 1 and
one STARTED event each (none run twice)."""
from __future__ import annotations

import socket
import time
import uuid

from sqlalchemy import text

from caesar_rest.celery_app import publish_run
from caesar_rest.db import engine_for

from .report import Figure
from .rows import insert_pending
from .stack import cpu_seconds, cpu_split, tree


def measure(stack, n: int, concurrency: int, timeout: float) -> list[Figure]:
    settings = stack.settings
    queue = stack.prefix + "local"
    name = f"drain{uuid.uuid4().hex[:6]}"
    worker = stack.start_worker(concurrency, name=name)
    hostname = f"{name}@{socket.gethostname()}"
    # The pool is up but takes nothing while the jobs are queued; it starts on all of them at once.
    stack.celery.control.cancel_consumer(queue, destination=[hostname], reply=True, timeout=10)
    tag = f"drain-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    ids = insert_pending(settings, n, tag=tag)
    t_insert = time.perf_counter() - t0
    t0 = time.perf_counter()
    for job_id in ids:
        publish_run(stack.celery, settings, job_id, "local")
    t_publish = time.perf_counter() - t0
    cpu0 = cpu_seconds(tree(worker.pid))
    split0 = cpu_split(worker.pid)
    wall0 = time.perf_counter()
    stack.celery.control.add_consumer(queue, destination=[hostname], reply=True, timeout=10)
    engine = engine_for(settings["DATABASE_URL"])
    deadline = time.time() + timeout
    done = 0
    while time.time() < deadline:
        with engine.connect() as conn:
            done = conn.execute(text("SELECT count(*) FROM jobs WHERE tag = :tag AND state IN "
                                     "('SUCCESS','FAILURE','TIMED-OUT','CANCELED','ABORTED')"), {"tag": tag}).scalar()
        if done >= n:
            break
        time.sleep(0.1)
    wall = time.perf_counter() - wall0
    cpu = cpu_seconds(tree(worker.pid)) - cpu0
    split = {k: round((v - split0[k]) / n * 1000, 2) for k, v in cpu_split(worker.pid).items()}
    # Let a duplicate delivery (if any) show up before counting.
    time.sleep(1.0)
    stack.stop_worker(worker)
    with engine.connect() as conn:
        mine = {"tag": tag}
        states = dict(conn.execute(text("SELECT state, count(*) FROM jobs WHERE tag = :tag GROUP BY state"),
                                   mine).all())
        span = conn.execute(text("SELECT min(start_date), max(end_date) FROM jobs WHERE tag = :tag"), mine).one()
        twice = conn.execute(text("SELECT count(*) FROM jobs WHERE tag = :tag AND attempts > 1"), mine).scalar()
        never = conn.execute(text("SELECT count(*) FROM jobs WHERE tag = :tag AND attempts = 0"), mine).scalar()
        double_start = conn.execute(text(
            "SELECT count(*) FROM (SELECT e.job_id FROM job_events e JOIN jobs j ON j.id = e.job_id "
            "WHERE j.tag = :tag AND e.state = 'STARTED' GROUP BY e.job_id HAVING count(*) > 1) d"), mine).scalar()
    seconds = (span[1] - span[0]).total_seconds() if span[0] and span[1] else None
    rate = n / seconds if seconds else 0.0
    lost = n - states.get("SUCCESS", 0)
    run_twice = max(twice, double_start)
    details = {"jobs": n, "worker_concurrency": concurrency, "first_claim_to_last_end_s": seconds,
               "wall_from_consuming_s": round(wall, 2), "worker_cpu_ms_per_job": round(cpu / n * 1000, 2),
               "worker_cpu_ms_per_job_by_process": split, "states": states, "attempts_gt_1": twice,
               "attempts_0": never, "jobs_with_two_STARTED_events": double_start,
               "insert_s": round(t_insert, 3), "publish_s": round(t_publish, 3),
               "publish_rate_per_s": round(n / t_publish, 1), "job_poll_interval": settings["JOB_POLL_INTERVAL"]}
    return [
        Figure("drain_rate", f"drain {n:,} queued no-op jobs", rate, "jobs/s", None, "",
               "reported; 0 lost, 0 run twice", bool(lost == 0 and run_twice == 0), details=details),
        Figure("drain_lost", "drain: jobs lost", float(lost), "jobs", None, "", "0", lost == 0),
        Figure("drain_run_twice", "drain: jobs run twice", float(run_twice), "jobs", None, "", "0", run_twice == 0),
    ]
