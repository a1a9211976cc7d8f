"""Job overhead: POST /job of the no-op app until the database records SUCCESS, against a bare Celery round
trip of an empty task plus spawning `true`. The end is the commit of the job's terminal state, seen through
PostgreSQL LISTEN/NOTIFY: a trigger (in the bench's own database) notifies when a job's state becomes
terminal, and notifications are delivered at commit. Nothing polls, so the measurement takes no CPU from
the two cores the service runs on (a 1 ms polling loop took a third of one). The same jobs on a pool with
SANDBOX none give what the job sandbox (bubblewrap, workers/sandbox.py) adds per job."""
from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC
from statistics import median
from typing import Any

import psycopg

from caesar_rest import API_PREFIX

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


NOTIFY_CHANNEL = "caesar_bench_job_end"
TRIGGER_SQL = f"""
CREATE OR REPLACE FUNCTION caesar_bench_notify_end() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{NOTIFY_CHANNEL}', NEW.id);
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER caesar_bench_job_end AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (NEW.state IN ('SUCCESS', 'FAILURE', 'TIMED-OUT', 'CANCELED', 'ABORTED')
          AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION caesar_bench_notify_end();
"""
DROP_SQL = "DROP TRIGGER IF EXISTS caesar_bench_job_end ON jobs; DROP FUNCTION IF EXISTS caesar_bench_notify_end();"


def job_round_trips(stack, base: str, n: int, warmup: int = 3) -> dict[str, Any]:
    conn = Connection(base)
    totals, posts, recorded = [], [], []
    phases: dict[str, list[float]] = {"queued": [], "staging": [], "running": []}
    states: dict[str, int] = {}
    with psycopg.connect(pg_conninfo(stack.db_url), autocommit=True) as pg:
        pg.execute(TRIGGER_SQL)
        pg.execute(f"LISTEN {NOTIFY_CHANNEL}")
        try:
            for i in range(warmup + n):
                wall0 = time.time()
                t0 = time.perf_counter()
                status, body = conn.request("POST", f"{API_PREFIX}/job", NOOP_JOB)
                t_post = time.perf_counter()
                if status != 202:
                    raise RuntimeError(f"POST /job answered {status}: {body[:300]!r}")
                job_id = json.loads(body)["job_id"]
                t_end = None
                while t_end is None:
                    got = list(pg.notifies(timeout=60, stop_after=1))
                    if not got:
                        raise RuntimeError(f"job {job_id} did not end in 60 s")
                    if got[0].payload == job_id:
                        t_end = time.perf_counter()
                if i < warmup:
                    continue
                row = pg.execute("SELECT state, end_date FROM jobs WHERE id = %s", (job_id,)).fetchone()
                states[row[0]] = states.get(row[0], 0) + 1
                totals.append(t_end - t0)
                posts.append(t_post - t0)
                # The worker's own clock for the end (same host): end_date - the client's POST time.
                recorded.append(row[1].replace(tzinfo=UTC).timestamp() - wall0)
                at = dict(pg.execute("SELECT state, at FROM job_events WHERE job_id = %s", (job_id,)).fetchall())
                if {"PENDING", "STARTED", "RUNNING", "SUCCESS"} <= set(at):
                    phases["queued"].append((at["STARTED"] - at["PENDING"]).total_seconds())
                    phases["staging"].append((at["RUNNING"] - at["STARTED"]).total_seconds())
                    phases["running"].append((at["SUCCESS"] - at["RUNNING"]).total_seconds())
        finally:
            pg.execute(f"UNLISTEN {NOTIFY_CHANNEL}")
            pg.execute(DROP_SQL)
    conn.close()
    return {"total": totals, "post": posts, "phases": phases, "states": states, "recorded": recorded}


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
    details = {"how": "sequential POST /job (gunicorn, keep-alive), end = commit of SUCCESS seen by LISTEN/NOTIFY",
               "job_ms": summary_ms(jobs["total"]), "post_202_ms": summary_ms(jobs["post"]),
               "post_to_end_date_ms (worker's timestamp)": summary_ms(jobs["recorded"]),
               "phases_ms_p50 (from job_events)": {k: round(median(v) * 1000, 2)
                                                   for k, v in jobs["phases"].items() if v},
               "celery_round_trip_ms": summary_ms(celery_rt), "spawn_true_ms": summary_ms(spawn),
               "end_states": jobs["states"], "worker_cpu_ms_per_job": round(worker_cpu * 1000, 2),
               "job_poll_interval": stack.settings["JOB_POLL_INTERVAL"]}
    success = jobs["states"].get("SUCCESS", 0) == len(jobs["total"])
    return [
        Figure("job_overhead_p50", "job overhead p50 (POST → SUCCESS)", p50 * 1000, "ms", baseline_p50 * 1000,
               "celery empty task + spawn true", "≤ 3x baseline and ≤ 30 ms",
               bool(success and p50 <= 3 * baseline_p50 and p50 * 1000 <= 30), details=details),
        Figure("job_overhead_p95", "job overhead p95", p95 * 1000, "ms", baseline_p95 * 1000,
               "celery + spawn, p95", "(reported)", None),
    ]


SANDBOX_BUDGET_MS = 5.0         # issue 19: the sandbox may add at most 5 ms p50


def sandbox_cost(stack, base: str, n: int, sandboxed: Figure) -> Figure:
    """The no-op job's p50 with the sandbox (sandboxed, measured first) against a pool with SANDBOX none."""
    plain = job_round_trips(stack, base, n)
    without_p50 = percentile(plain["total"], 50) * 1000
    with_p50 = sandboxed.value
    added = with_p50 - without_p50
    success = plain["states"].get("SUCCESS", 0) == len(plain["total"])
    details = {"with_sandbox_job_ms": sandboxed.details.get("job_ms"),
               "without_sandbox_job_ms": summary_ms(plain["total"]),
               "without_sandbox_phases_ms_p50": {k: round(median(v) * 1000, 2)
                                                 for k, v in plain["phases"].items() if v},
               "added_ms_p50": round(added, 2), "end_states_without": plain["states"]}
    return Figure("job_overhead_sandbox_p50", "job overhead p50 with the sandbox (baseline: SANDBOX none)", with_p50,
                  "ms", without_p50, "same jobs, pool without the sandbox", f"adds ≤ {SANDBOX_BUDGET_MS:g} ms",
                  bool(success and added <= SANDBOX_BUDGET_MS), notes=f"the sandbox adds {added:.2f} ms p50",
                  details=details)
