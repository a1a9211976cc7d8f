"""Reads with a full database: GET /jobs (first page, default size; deep pages by number and by page_token) and
GET /job/<id>/status of random jobs, sequential requests on one keep-alive connection, after topping the jobs
table up to N rows."""
from __future__ import annotations

import random
import time

from sqlalchemy import text

from caesar_rest import API_PREFIX, paging
from caesar_rest.db import engine_for

from .httpload import Connection
from .report import Figure, percentile, summary_ms
from .rows import fill_history


def _timed_gets(conn: Connection, paths: list[str], warmup: int = 10) -> list[float]:
    times = []
    for i, path in enumerate(paths[:warmup] + paths):
        t0 = time.perf_counter()
        status, body = conn.request("GET", path)
        elapsed = time.perf_counter() - t0
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
        if i >= warmup:
            times.append(elapsed)
    return times


def measure(stack, base: str, total_jobs: int, requests: int) -> list[Figure]:
    engine = engine_for(stack.settings["DATABASE_URL"])
    with engine.connect() as conn:
        have = conn.execute(text("SELECT count(*) FROM jobs")).scalar()
    t0 = time.perf_counter()
    added = fill_history(stack.settings, max(0, total_jobs - have))
    fill_s = time.perf_counter() - t0
    # A live table is kept vacuumed by autovacuum (it would start within a minute of this load): measure that
    # steady state, not the minute when index-only scans must still visit every heap page.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE jobs"))
    with engine.begin() as conn:
        count = conn.execute(text("SELECT count(*) FROM jobs")).scalar()
        ids = [r[0] for r in conn.execute(text("SELECT id FROM jobs ORDER BY random() LIMIT :n"), {"n": requests})]
        marks = conn.execute(text("SELECT submit_date, id FROM jobs ORDER BY random() LIMIT :n"),
                             {"n": max(10, requests // 5)}).all()
    http = Connection(base)
    page = _timed_gets(http, [f"{API_PREFIX}/jobs"] * requests)
    status = _timed_gets(http, [f"{API_PREFIX}/job/{i}/status" for i in ids])
    rng = random.Random(1)
    extra_n = max(10, requests // 5)
    filtered = _timed_gets(http, [f"{API_PREFIX}/jobs?state=FAILURE,CANCELED&tag=survey-{rng.randrange(37)}"
                                  for _ in range(extra_n)])
    deep = _timed_gets(http, [f"{API_PREFIX}/jobs?page={rng.randrange(1, max(2, count // 50))}"
                              for _ in range(extra_n)])
    # the same depths reached by page_token (a keyset range instead of OFFSET): what a client walking pages gets
    tokens = _timed_gets(http, [f"{API_PREFIX}/jobs?page_token={paging.encode_token(row)}" for row in marks])
    http.close()
    details = {"jobs_in_database": count, "vacuum_analyze_after_load": True, "rows_added": added,
               "fill_s": round(fill_s, 2), "jobs_page_ms": summary_ms(page), "status_ms": summary_ms(status),
               "jobs_filtered_ms (state+tag)": summary_ms(filtered),
               "jobs_deep_page_ms (random page)": summary_ms(deep),
               "jobs_deep_token_ms (random page_token)": summary_ms(tokens)}
    p95_page, p95_status = percentile(page, 95) * 1000, percentile(status, 95) * 1000
    return [
        Figure("jobs_page_p95", f"GET /jobs p95 ({count:,} jobs)", p95_page, "ms", None, "", "≤ 20 ms",
               p95_page <= 20, details=details),
        Figure("job_status_p95", f"GET /job/<id>/status p95 ({count:,} jobs)", p95_status, "ms", None, "", "≤ 20 ms",
               p95_status <= 20),
    ]
