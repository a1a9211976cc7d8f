"""Job overhead: POST /job of the no-op app until the database records SUCCESS, against a bare Celery round
trip of an empty task plus spawning `true`. The end is the commit of the job's terminal state, seen through
PostgreSQL LISTEN/NOTIFY: a trigger (in the bench's own database) notifies when a job's state becomes
terminal, and notifications are delivered at commit. Nothing polls, so the measurement takes no CPU from
the two cores the service runs on (a 1 ms polling loop took a third of one). The same jobs on a pool with
SANDBOX none, in blocks taken in turn with the sandboxed pool, give what the job sandbox (bubblewrap,
workers/sandbox.py) adds per job."""
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
               "celery empty task + spawn true", "≤ 2.5x baseline (sandboxed)",
               bool(success and p50 <= 2.5 * baseline_p50), details=details),
        Figure("job_overhead_p95", "job overhead p95", p95 * 1000, "ms", baseline_p95 * 1000,
               "celery + spawn, p95", "(reported)", None),
    ]


SANDBOX_BUDGET_MS = 5.0         # issue 19: the sandbox may add at most 5 ms p50


def _consume_only(stack, hostname: str, others: list[str]) -> None:
    """Route the next jobs to one pool: the others stop consuming the job queue (nothing is in flight between
    blocks: every job has ended before the next block starts)."""
    queue = stack.prefix + "local"
    for other in others:
        stack.celery.control.cancel_consumer(queue, destination=[other], reply=True, timeout=10)
    stack.celery.control.add_consumer(queue, destination=[hostname], reply=True, timeout=10)


def sandbox_cost(stack, base: str, n: int, sandboxed: str, plain: str) -> Figure:
    """The no-op job with the sandbox (pool `sandboxed`) against a pool with SANDBOX none (`plain`), both up at once
    and taking blocks of jobs in turn (ABBA...), so that both see the same load: run one after the other, the two
    halves of a run on a shared 2-core VM differed by more than the sandbox's cost, either way."""
    block = max(5, n // 10)
    times: dict[str, list[float]] = {"with": [], "without": []}
    blocks: dict[str, list[float]] = {"with": [], "without": []}
    states: dict[str, dict[str, int]] = {"with": {}, "without": {}}
    pools = {"with": sandboxed, "without": plain}
    for i in range(2 * -(-n // block)):       # each pair of blocks has one of each kind
        kind = ("with", "without", "without", "with")[i % 4]
        _consume_only(stack, pools[kind], [h for k, h in pools.items() if k != kind])
        got = job_round_trips(stack, base, block, warmup=1)
        times[kind] += got["total"]
        blocks[kind].append(percentile(got["total"], 50) * 1000)
        for state, count in got["states"].items():
            states[kind][state] = states[kind].get(state, 0) + count
    _consume_only(stack, sandboxed, [plain])
    with_p50, without_p50 = (percentile(times[k], 50) * 1000 for k in ("with", "without"))
    added = with_p50 - without_p50
    paired = [w - wo for w, wo in zip(blocks["with"], blocks["without"], strict=True)]
    success = all(states[k].get("SUCCESS", 0) == len(times[k]) for k in times)
    details = {"how": f"blocks of {block} jobs taken in turn by the two pools (with, without, without, with, ...)",
               "with_sandbox_job_ms": summary_ms(times["with"]), "without_sandbox_job_ms": summary_ms(times["without"]),
               "block_p50_ms": {k: [round(v, 2) for v in blocks[k]] for k in blocks},
               "added_ms_p50": round(added, 2), "added_ms_median_of_block_pairs": round(median(paired), 2),
               "end_states": states}
    return Figure("job_overhead_sandbox_p50", "job overhead p50 with the sandbox (baseline: SANDBOX none)", with_p50,
                  "ms", without_p50, "same jobs, pool without the sandbox, blocks in turn",
                  f"adds ≤ {SANDBOX_BUDGET_MS:g} ms", bool(success and added <= SANDBOX_BUDGET_MS),
                  notes=f"the sandbox adds {added:.2f} ms p50", details=details)
