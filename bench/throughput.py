"""Submission throughput: concurrent POST /job over HTTP against the bare publish rate of the same Celery
configuration, under gunicorn (the stack's API) and under uWSGI (uwsgi.ini, the server nginx talks to in
production; same processes and threads). No worker consumes meanwhile (the jobs would compete for the two
cores); the queued messages and rows are removed afterwards.

The two servers spread the load differently: gunicorn's gthread worker that wins the accept race keeps
its keep-alive connections, so one process (one GIL) serves most of the 16 connections; uWSGI's threads
accept one connection each and its HTTP socket closes the connection after each answer, so every request
is a new connection, spread over all processes."""
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
    """Messages a second, one producer, sequential: `publish_run` (the job message through this thread's cached
    kombu producer, with the API's retry policy and the transport's publisher confirms: a bare publish, the
    same one POST /job makes) of job ids nobody consumes."""
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


def _submit(stack, base: str, n: int, concurrency: int, server_pids) -> tuple:
    load(base, "POST", f"{API_PREFIX}/job", NOOP_JOB, total=min(100, n), concurrency=concurrency)   # warm-up
    pids = tree(server_pids)
    cpu0 = cpu_seconds(pids)
    result = load(base, "POST", f"{API_PREFIX}/job", NOOP_JOB, total=n, concurrency=concurrency)
    api_cpu = cpu_seconds(pids) - cpu0
    remove_bench_jobs(stack)
    return result, api_cpu


def measure(stack, base: str, n: int, concurrency: int) -> list[Figure]:
    from .stack import UWSGI

    # The baseline is taken before, between and after the two servers' runs (the machine's load drifts over
    # a run; one baseline taken first was 900-1,500 msg/s from run to run); the median counts.
    rates = []

    def take_baseline() -> None:
        rates.append(publish_rate(stack, max(n // 2, 500))[0])
        stack.purge("local")

    take_baseline()
    result, api_cpu = _submit(stack, base, n, concurrency, stack.api.proc.pid)
    take_baseline()
    uwsgi = UWSGI(stack.overrides, stack.root, stack.api.processes, stack.api.threads)
    try:
        uwsgi_result, uwsgi_cpu = _submit(stack, uwsgi.start(), n, concurrency, uwsgi.proc.pid)
    finally:
        uwsgi.stop()
    take_baseline()
    baseline = sorted(rates)[1]
    figures = []
    for key, title, server, res, cpu in (
            ("submit_throughput", "submission throughput (POST /job)",
             f"gunicorn {stack.api.processes} processes x {stack.api.threads} threads (gthread)", result, api_cpu),
            ("submit_throughput_uwsgi", "submission throughput, uWSGI (uwsgi.ini)",
             f"uWSGI {stack.api.processes} processes x {stack.api.threads} threads (uwsgi.ini, --http-socket)",
             uwsgi_result, uwsgi_cpu)):
        rate = res.ok / res.elapsed
        details = {"requests": n, "concurrency": concurrency, "elapsed_s": round(res.elapsed, 3),
                   "statuses": res.statuses, "api_cpu_ms_per_request": round(cpu / n * 1000, 2),
                   "latency_ms": summary_ms(res.latencies), "api": server,
                   "baseline_messages_each": max(n // 2, 500),
                   "baseline_rates (before, between, after)": [round(r, 1) for r in rates]}
        ok = res.statuses.get(202, 0) == n
        figures.append(Figure(key, title, rate, "jobs/s", baseline, "bare publish loop (publish_run)",
                              "≥ 0.6x baseline", bool(ok and rate >= 0.6 * baseline),
                              details=details))
    return figures
