"""Job overhead: POST /job of the no-op app until the database records SUCCESS, against a bare Celery round
trip of an empty task plus spawning `true`. The end is seen by polling the jobs table directly (every 1 ms,
one indexed primary-key SELECT on an autocommit connection), so neither the API nor HTTP adds to it."""
from __future__ import annotations

import json
import subprocess
import time
from statistics import median
from typing import Any

import psycopg

from caesar_rest import API_PREFIX
from caesar_rest.models import TERMINAL_STATES

from .bare import NOOP_TASK
from .httpload import Connection
from .report import Figure, percentile, summary_ms
from .stack import cpu_seconds, tree

NOOP_JOB = {"app": "noop", "job_inputs": {}}


def pg_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg", "postgresql")


def celery_round_trips(stack, n: int, warmup: int = 5) -> list[float]:
    queue = stack.prefix + "bare"
    times = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        stack.celery.send_task(NOOP_TASK, queue=queue, routing_key=queue).get(timeout=30)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def spawn_true(n: int, warmup: int = 3) -> list[float]:
    times = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        subprocess.run(["true"], check=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def job_round_trips(stack, base: str, n: int, warmup: int = 3, poll: float = 0.001) -> dict[str, Any]:
    conn = Connection(base)
    totals, posts, phases = [], [], {"queued": [], "staging": [], "running": []}
    states: dict[str, int] = {}
    with psycopg.connect(pg_conninfo(stack.db_url), autocommit=True) as pg:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            status, body = conn.request("POST", f"{API_PREFIX}/job", NOOP_JOB)
            t_post = time.perf_counter()
            if status != 202:
                raise RuntimeError(f"POST /job answered {status}: {body[:300]!r}")
            job_id = json.loads(body)["job_id"]
            deadline = t0 + 60
            while True:
                state = pg.execute("SELECT state FROM jobs WHERE id = %s", (job_id,)).fetchone()[0]
                if state in TERMINAL_STATES:
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"job {job_id} still {state} after 60 s")
                time.sleep(poll)
            t_end = time.perf_counter()
            if i < warmup:
                continue
            states[state] = states.get(state, 0) + 1
            totals.append(t_end - t0)
            posts.append(t_post - t0)
            at = dict(pg.execute("SELECT state, at FROM job_events WHERE job_id = %s", (job_id,)).fetchall())
            if {"PENDING", "STARTED", "RUNNING", "SUCCESS"} <= set(at):
                phases["queued"].append((at["STARTED"] - at["PENDING"]).total_seconds())
                phases["staging"].append((at["RUNNING"] - at["STARTED"]).total_seconds())
                phases["running"].append((at["SUCCESS"] - at["RUNNING"]).total_seconds())
    conn.close()
    return {"total": totals, "post": posts, "phases": phases, "states": states}


def measure(stack, base: str, n: int, worker) -> list[Figure]:
    celery_rt = celery_round_trips(stack, n)
    spawn = spawn_true(n)
    worker_pids = tree(worker.pid)
    cpu0 = cpu_seconds(worker_pids)
    jobs = job_round_trips(stack, base, n)
    worker_cpu = (cpu_seconds(worker_pids) - cpu0) / (n + 3)
    baseline_p50 = median(celery_rt) + median(spawn)
    baseline_p95 = percentile(celery_rt, 95) + percentile(spawn, 95)
    p50, p95 = percentile(jobs["total"], 50), percentile(jobs["total"], 95)
    details = {"how": "sequential POST /job (gunicorn, keep-alive) then SELECT state every 1 ms on PostgreSQL",
               "job_ms": summary_ms(jobs["total"]), "post_202_ms": summary_ms(jobs["post"]),
               "phases_ms_p50 (from job_events)": {k: round(median(v) * 1000, 2) for k, v in jobs["phases"].items() if v},
               "celery_round_trip_ms": summary_ms(celery_rt), "spawn_true_ms": summary_ms(spawn),
               "end_states": jobs["states"], "worker_cpu_ms_per_job": round(worker_cpu * 1000, 2), "job_poll_interval": stack.settings["JOB_POLL_INTERVAL"]}
    success = jobs["states"].get("SUCCESS", 0) == len(jobs["total"])
    return [
        Figure("job_overhead_p50", "job overhead p50 (POST → SUCCESS)", p50 * 1000, "ms", baseline_p50 * 1000,
               "celery empty task + spawn true", "≤ 3x baseline and ≤ 30 ms",
               bool(success and p50 <= 3 * baseline_p50 and p50 * 1000 <= 30), details=details),
        Figure("job_overhead_p95", "job overhead p95", p95 * 1000, "ms", baseline_p95 * 1000,
               "celery + spawn, p95", "(reported)", None),
    ]
