"""Submission throughput: concurrent POST /job over HTTP (gunicorn) against the bare publish rate of the same
Celery configuration. No worker consumes meanwhile (the jobs would compete for the two cores); the queued
messages and rows are removed afterwards."""
from __future__ import annotations

import time
import uuid

from sqlalchemy import text

from caesar_rest import API_PREFIX
from caesar_rest.celery_app import publish_run
from caesar_rest.db import engine_for

from .httpload import load
from .overhead import NOOP_JOB
from .report import Figure, summary_ms
from .stack import cpu_seconds, tree


def publish_rate(stack, n: int) -> tuple[float, float]:
    """Messages a second, one producer, sequential: `publish_run` (send_task with the API's retry policy and
    the transport's publisher confirms) of job ids nobody consumes."""
    for _ in range(20):      # connection and channel set up
        publish_run(stack.celery, stack.settings, str(uuid.uuid4()), "local")
    t0 = time.perf_counter()
    for _ in range(n):
        publish_run(stack.celery, stack.settings, str(uuid.uuid4()), "local")
    elapsed = time.perf_counter() - t0
    return n / elapsed, elapsed


def remove_bench_jobs(stack) -> None:
    stack.purge("local")
    with engine_for(stack.settings["DATABASE_URL"]).begin() as conn:
        conn.execute(text("DELETE FROM job_events WHERE job_id IN (SELECT id FROM jobs WHERE state = 'PENDING')"))
        conn.execute(text("DELETE FROM jobs WHERE state = 'PENDING'"))


def measure(stack, base: str, n: int, concurrency: int) -> list[Figure]:
    baseline, base_elapsed = publish_rate(stack, max(n, 500))
    stack.purge("local")
    load(base, "POST", f"{API_PREFIX}/job", NOOP_JOB, total=min(100, n), concurrency=concurrency)   # warm-up
    api_pids = tree(stack.api.proc.pid)
    cpu0 = cpu_seconds(api_pids)
    result = load(base, "POST", f"{API_PREFIX}/job", NOOP_JOB, total=n, concurrency=concurrency)
    api_cpu = cpu_seconds(api_pids) - cpu0
    rate = result.ok / result.elapsed
    remove_bench_jobs(stack)
    details = {"requests": n, "concurrency": concurrency, "elapsed_s": round(result.elapsed, 3),
               "statuses": result.statuses, "api_cpu_ms_per_request": round(api_cpu / n * 1000, 2), "latency_ms": summary_ms(result.latencies),
               "api": f"gunicorn {stack.api.processes} processes x {stack.api.threads} threads (gthread)",
               "baseline_messages": max(n, 500), "baseline_elapsed_s": round(base_elapsed, 3)}
    ok = result.statuses.get(202, 0) == n
    return [Figure("submit_throughput", "submission throughput (POST /job)", rate, "jobs/s", baseline,
                   "publish_run loop", "≥ 0.5x baseline and ≥ 300 jobs/s",
                   bool(ok and rate >= 0.5 * baseline and rate >= 300), details=details)]
