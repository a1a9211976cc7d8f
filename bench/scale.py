"""A million jobs (issue 18, scale): the jobs table topped up to N rows (one in a hundred a TES task) by PostgreSQL
itself, then, sequential requests on one keep-alive connection: GET /jobs (the first page and deep pages by
page_token), GET /job/<id>/status, TES ListTasks (first page and by page_token), OGC API GET /jobs and GET /metrics;
and the reaper's periodic run (workers.lost.reap, as beat calls it) with a backlog of overdue PENDING jobs (20,000 at
a million). Everything is measured at a tenth of N first: that is each figure's baseline, the ratio what ten times the
jobs costs."""
from __future__ import annotations

import time
import uuid
from datetime import timedelta

from sqlalchemy import insert, text

from caesar_rest import API_PREFIX, paging
from caesar_rest.db import engine_for
from caesar_rest.models import DURATION_BUCKETS, EVENTS, JOBS, utcnow

from .httpload import Connection
from .listing import _timed_gets
from .report import Figure, percentile, summary_ms
from .rows import TES_EVERY, fill_history, job_row

TES = "/ga4gh/tes/v1/tasks"
#: The reaper's run must stay within this (REAPER_INTERVAL is 15 s; a run is one control-queue task).
REAPER_TARGET_S = 1.0


def _overdue_pending(stack, n: int, tag: str) -> list[str]:
    """n PENDING jobs submitted an hour ago on a backend no worker serves (the reaper republishes them, each once
    per PENDING_REPUBLISH_AFTER, REPUBLISH_BATCH a run): what a backlog looks like to it, among a million finished
    jobs."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    then = utcnow() - timedelta(hours=1)
    rows = [{**job_row(stack.settings, i, tag=tag, submitted=then - timedelta(milliseconds=k)), "backend": "scalebench"}
            for k, i in enumerate(ids)]
    with engine_for(stack.settings["DATABASE_URL"]).begin() as conn:
        for start in range(0, n, 5000):
            conn.execute(insert(JOBS), rows[start:start + 5000])
        conn.execute(insert(EVENTS), [{"job_id": i, "state": "PENDING", "message": "Job submitted", "at": then}
                                      for i in ids])
    return ids


def _reaper_runs(stack, runs: int) -> tuple[list[float], list[dict], int]:
    from workers.lost import reap

    published: list[str] = []
    times, results = [], []
    settings = {**stack.settings, "REAPER_DB_GRACE": 0}     # judge heartbeats from the first run, as a steady reaper
    for _ in range(runs):       # each republishes the next REPUBLISH_BATCH of the backlog, oldest first
        t0 = time.perf_counter()
        results.append(reap(settings, publish=lambda job_id, _backend: published.append(job_id),
                            follow=lambda _job_id: None, view=lambda: None))
        times.append(time.perf_counter() - t0)
    return times, results, len(published)


def _old_scrape_query_ms(url: str, runs: int = 3) -> float:
    """What a scrape's job gauges cost before migration 0009: the GROUP BY over the whole jobs table (by app,
    backend and state, plus the duration histogram's), median of `runs`."""
    buckets = ", ".join(f"sum(CASE WHEN elapsed <= {b} THEN 1 ELSE 0 END)" for b in DURATION_BUCKETS)
    times = []
    with engine_for(url).connect() as conn:
        for _ in range(runs):
            t0 = time.perf_counter()
            conn.execute(text("SELECT app, backend, state, count(*) FROM jobs GROUP BY app, backend, state")).all()
            conn.execute(text(f"SELECT app, backend, count(*), coalesce(sum(elapsed), 0), {buckets} FROM jobs "
                              f"WHERE state IN ('SUCCESS', 'FAILURE', 'TIMED-OUT', 'CANCELED', 'ABORTED') "
                              f"AND elapsed IS NOT NULL GROUP BY app, backend")).all()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1000


def _at_size(stack, base: str, requests: int) -> tuple[dict[str, float], dict]:
    """Every read and the reaper's runs at the table's present size: ({key: p95 ms, reaper: max s}, details)."""
    engine = engine_for(stack.settings["DATABASE_URL"])
    t0 = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE jobs"))          # the steady state autovacuum keeps (as bench/listing.py)
        conn.execute(text("VACUUM ANALYZE job_counts"))
        # and writes out the load's dirty pages (a gigabyte at a million rows), which the checkpointer would
        # otherwise spread over the next minutes of measurement: a live table does not take a million rows a minute
        conn.execute(text("CHECKPOINT"))
    vacuum_s = time.perf_counter() - t0
    marks_n = max(10, requests // 3)
    with engine.begin() as conn:
        count = conn.execute(text("SELECT count(*) FROM jobs")).scalar() or 0
        tes_count = conn.execute(text("SELECT count(*) FROM jobs WHERE kind = 'tes'")).scalar() or 0
        ids = [r[0] for r in conn.execute(text("SELECT id FROM jobs ORDER BY random() LIMIT :n"), {"n": requests})]
        marks = conn.execute(text("SELECT submit_date, id FROM jobs WHERE kind = 'app' ORDER BY random() LIMIT :n"),
                             {"n": marks_n}).all()
        tes_marks = conn.execute(text("SELECT submit_date, id FROM jobs WHERE kind = 'tes' ORDER BY random() "
                                      "LIMIT :n"), {"n": marks_n}).all()
    http = Connection(base)
    try:
        timed = {
            "jobs_first": _timed_gets(http, [f"{API_PREFIX}/jobs"] * requests),
            "jobs_token": _timed_gets(http, [f"{API_PREFIX}/jobs?page_token={paging.encode_token(r)}" for r in marks]),
            "status": _timed_gets(http, [f"{API_PREFIX}/job/{i}/status" for i in ids]),
            "tes_first": _timed_gets(http, [TES] * requests),
            "tes_token": _timed_gets(http, [f"{TES}?page_token={paging.encode_token(r)}" for r in tes_marks]),
            "ogc_first": _timed_gets(http, ["/ogcapi/jobs?f=json"] * requests),
            "ogc_token": _timed_gets(http, [f"/ogcapi/jobs?f=json&page_token={paging.encode_token(r)}"
                                            for r in marks]),
            "metrics": _timed_gets(http, ["/metrics"] * max(10, requests // 3)),
        }
    finally:
        http.close()
    reaper_s, reaped, republished = _reaper_runs(stack, 5)
    p95 = {key: percentile(values, 95) * 1000 for key, values in timed.items()}
    p95["ogc"] = max(p95["ogc_first"], p95["ogc_token"])
    p95["reaper"] = max(reaper_s)
    details = {"jobs_in_database": count, "tes_tasks_in_database": tes_count, "vacuum_analyze_s": round(vacuum_s, 2),
               **{f"{key}_ms": summary_ms(values) for key, values in timed.items()},
               "reaper_run_s": [round(t, 4) for t in reaper_s], "reaper_results": reaped,
               "reaper_republished": republished}
    return p95, details


def measure(stack, base: str, total_jobs: int, requests: int) -> list[Figure]:
    """Everything at a tenth of total_jobs (the baseline: what ten times the jobs costs is the ratio), then at
    total_jobs; plus, at total_jobs, the GROUP BY a scrape made before migration 0009."""
    url = stack.settings["DATABASE_URL"]
    with engine_for(url).connect() as conn:
        have = conn.execute(text("SELECT count(*) FROM jobs")).scalar() or 0
    small = max(have, total_jobs // 10)
    t0 = time.perf_counter()
    first = fill_history(stack.settings, small - have, tes=True)
    # The listing phase's rows hold no TES task: the tenth gets its share of them, else ListTasks by page_token has
    # nothing to page through there and no baseline.
    with engine_for(url).connect() as conn:
        tes_have = conn.execute(text("SELECT count(*) FROM jobs WHERE kind = 'tes'")).scalar() or 0
    first += fill_history(stack.settings, max(0, small // TES_EVERY - tes_have), tes=True, tes_every=1)
    first_s = time.perf_counter() - t0
    tag = f"scale-{uuid.uuid4().hex[:8]}"
    backlog = _overdue_pending(stack, max(10, min(20_000, total_jobs // 50)), tag)
    try:
        before, before_details = _at_size(stack, base, requests)
        t0 = time.perf_counter()
        added = fill_history(stack.settings, max(0, total_jobs - small), tes=True)
        fill_s = first_s + time.perf_counter() - t0
        after, details = _at_size(stack, base, requests)
        old_scrape = _old_scrape_query_ms(url)
    finally:
        with engine_for(url).begin() as conn:                  # the backlog goes: later phases never see it
            conn.execute(text("DELETE FROM jobs WHERE tag = :tag"), {"tag": tag})
    details = {**details, "rows_added": first + added, "fill_s": round(fill_s, 2),
               "fill_rows_per_s": round((first + added) / fill_s) if first + added and fill_s else None,
               "reaper_backlog": len(backlog),
               "old_scrape_group_by_ms": round(old_scrape, 1), "at_a_tenth": before_details}
    n, m = f"{details['jobs_in_database']:,} jobs", f"{before_details['jobs_in_database']:,}"

    def fig(key: str, part: str, title: str, target: float, unit: str = "ms") -> Figure:
        value = after[part]
        return Figure(key, f"{title} ({n})", value, unit, before[part], f"at {m}", f"≤ {target:g} {unit}",
                      value <= target)

    figures = [
        fig("scale_jobs_first_p95", "jobs_first", "GET /jobs first page p95", 20),
        fig("scale_jobs_token_p95", "jobs_token", "GET /jobs?page_token (deep pages) p95", 20),
        fig("scale_status_p95", "status", "GET /job/<id>/status p95", 20),
        fig("scale_tes_first_p95", "tes_first", "TES ListTasks first page p95", 20),
        fig("scale_tes_token_p95", "tes_token", "TES ListTasks by page_token p95", 20),
        fig("scale_ogc_jobs_p95", "ogc", "OGC GET /jobs (first and by page_token) p95", 20),
        fig("scale_metrics_p95", "metrics", "GET /metrics p95", 100),
        fig("scale_reaper_run", "reaper", f"reaper run, max of 5 ({len(backlog)} overdue PENDING)",
            REAPER_TARGET_S, "s"),
        Figure("scale_fill_time", f"filling the jobs table with {first + added:,} rows (server-side INSERT ... SELECT)",
               fill_s, "s", None, "", "≤ 120 s for a million", fill_s <= 120 if first + added >= 900_000 else None),
    ]
    figures[0].details = details
    figures[6].notes = f"the GROUP BY over jobs a scrape made before (migration 0009) took {old_scrape:.0f} ms"
    return figures
