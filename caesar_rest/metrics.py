"""Prometheus metrics: jobs by state/app/backend and job durations (from the counts the database keeps: migration
0009), notifications (from the database), queue depth
per pool (from the broker), and request/upload/download counters shared by every API process on the host.

Counters live in one small SQLite file per host (METRICS_DIR), incremented by each uWSGI/gunicorn process
under SQLite's lock: in-process counters would show one random process's share at each scrape, and the
database alone cannot count downloads. Restarts keep the totals; Prometheus copes with resets anyway."""
from __future__ import annotations

import logging
import math
import os
import socket
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from sqlalchemy import func, select, text
from sqlalchemy.engine import CursorResult

from .config import queue_name
from .db import read_connection, session_scope
from .models import ALL_STATES, DURATION_BUCKETS, JOB_COUNTS, NOTIFY_COUNTS, TERMINAL_STATES

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def counters_path(settings: Mapping[str, Any]) -> Path:
    base = settings.get("METRICS_DIR") or os.path.join(settings["ROOT"], "metrics")
    return Path(base) / f"counters-{socket.gethostname()}.sqlite"


class CounterStore:
    """Monotonic counters keyed by (name, labels), shared by the processes of one host through SQLite."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():      # never reuse a connection across fork
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")               # counters, not records: speed over durability
            conn.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT NOT NULL, labels TEXT NOT NULL, "
                         "value REAL NOT NULL, PRIMARY KEY (name, labels))")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def add(self, items: Iterable[tuple[str, Mapping[str, Any], float]]) -> None:
        rows = [(name, _labels(labels), float(value)) for name, labels, value in items]
        conn = self._conn()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO counters (name, labels, value) VALUES (?, ?, ?) "
                             "ON CONFLICT (name, labels) DO UPDATE SET value = value + excluded.value", rows)

    def read(self) -> list[tuple[str, str, float]]:
        return list(self._conn().execute("SELECT name, labels, value FROM counters ORDER BY name, labels"))


_stores: dict[Path, CounterStore] = {}
_stores_lock = threading.Lock()


def store(settings: Mapping[str, Any]) -> CounterStore:
    path = counters_path(settings)
    with _stores_lock:
        if path not in _stores:
            _stores[path] = CounterStore(path)
        return _stores[path]


# ---- exposition format ---------------------------------------------------------------------------------------

def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, Any]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Exposition:
    """Collects families (HELP, TYPE, samples) and renders Prometheus text format 0.0.4."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def family(self, name: str, kind: str, help_text: str) -> None:
        self._families.setdefault(name, (kind, help_text, []))

    def sample(self, family: str, value: float, labels: Mapping[str, Any] | str = "", suffix: str = "") -> None:
        text = labels if isinstance(labels, str) else _labels(labels)
        self._families[family][2].append(f"{family}{suffix}{{{text}}} {_number(value)}" if text
                                         else f"{family}{suffix} {_number(value)}")

    def render(self) -> str:
        out = []
        for name, (kind, help_text, samples) in self._families.items():
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)
        return "\n".join(out) + "\n"


COUNTERS = {
    "caesar_http_requests_total": "HTTP requests answered, by method, endpoint and status.",
    "caesar_http_request_duration_seconds_total":
        "Time spent answering requests (until the body was sent), by endpoint.",
    "caesar_uploads_total": "Files uploaded and stored.",
    "caesar_upload_bytes_total": "Bytes of files uploaded and stored.",
    "caesar_downloads_total": "File downloads answered, by how they were sent (app or nginx X-Accel-Redirect).",
    "caesar_download_bytes_total": "Bytes of files downloaded (whole-file size for X-Accel-Redirect), by how.",
    "caesar_job_outputs_total": "Job output tarballs streamed.",
}


# Label values come from fixed sets, never from the request as sent: `curl -X FOOBAR` or a random path must
# not create a new series (each one costs Prometheus memory for good, and this counter file a row).
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
UNMATCHED = "unmatched"      # the endpoint of a path no route matches (404, 405)


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def endpoint_label(endpoint: str | None) -> str:
    """Flask's endpoint name (one per route, fixed by the code), or 'unmatched'."""
    return endpoint if endpoint and endpoint != "-" else UNMATCHED


def count_request(settings: Mapping[str, Any], request_fields: Mapping[str, Any], response) -> None:
    """Close hook of every request (caesar_rest.logs): the counters for that request, in one transaction."""
    fields = request_fields
    endpoint, status = endpoint_label(fields.get("endpoint")), int(fields["status"])
    items: list[tuple[str, Mapping[str, Any], float]] = [
        ("caesar_http_requests_total", {"method": method_label(fields["method"]), "endpoint": endpoint,
                                        "status": status}, 1),
        ("caesar_http_request_duration_seconds_total", {"endpoint": endpoint}, fields.get("duration_ms", 0) / 1000),
    ]
    if endpoint == "files.upload" and status == 200:
        body = response.get_json(silent=True) or {}
        items += [("caesar_uploads_total", {}, 1), ("caesar_upload_bytes_total", {}, body.get("size_bytes") or 0)]
    elif endpoint in ("files.download", "files.download_by_uuid") and status in (200, 206):   # /download-id, /download
        accel = response.headers.get("X-Accel-Redirect")
        size = response.content_length or 0
        if accel:
            prefix = settings.get("ACCEL_REDIRECT_PREFIX", "")
            try:
                size = os.path.getsize(os.path.join(settings["DATA_DIR"], accel[len(prefix):]))
            except OSError:
                size = 0
        via = "nginx" if accel else "app"
        items += [("caesar_downloads_total", {"via": via}, 1), ("caesar_download_bytes_total", {"via": via}, size)]
    elif endpoint == "jobs.output" and status == 200:
        items.append(("caesar_job_outputs_total", {}, 1))
    store(settings).add(items)


# ---- from the database and the broker ------------------------------------------------------------------------

#: A scrape that sums more rows of job_counts than this folds them (PostgreSQL's triggers append a few per job; the
#: reaper folds them on each run too, so a scrape rarely has to).
COMPACT_ABOVE = 2000


def compact_job_counts(url: str) -> int:
    """Fold the delta rows of job_counts and notify_counts into one per key (PostgreSQL; SQLite's triggers keep one
    already): each table in one statement, so a delta committed meanwhile is neither seen nor deleted, and none is
    lost or counted twice, even with two of these at once (the second skips the rows the first deleted). Keys
    whose rows are all gone are dropped. Returns the rows of job_counts there are now."""
    if not url.startswith("postgresql"):
        return 0
    folded = 0
    with session_scope(url) as s:
        for table, key in ((JOB_COUNTS, ("app", "backend", "state")), (NOTIFY_COUNTS, ("state",))):
            columns = ", ".join(c.name for c in table.c)
            keys = ", ".join(key)
            sums = ", ".join(f"sum({c.name})" for c in table.c if c.name not in key)
            done = cast(CursorResult[Any], s.execute(text(
                f"WITH gone AS (DELETE FROM {table.name} RETURNING *) "
                f"INSERT INTO {table.name} ({columns}) SELECT {keys}, {sums} FROM gone "
                f"GROUP BY {keys} HAVING sum(n) <> 0")))
            if table is JOB_COUNTS:
                folded = int(done.rowcount or 0)
    return folded


def _jobs(exp: Exposition, settings: Mapping[str, Any]) -> None:
    """From job_counts (kept by the database's triggers: migration 0009), never from the jobs table: a scrape costs
    the same with a million jobs as with ten."""
    exp.family("caesar_jobs", "gauge", "Jobs in the database by state, app and backend.")
    exp.family("caesar_job_duration_seconds", "histogram", "Run time of finished jobs, by app and backend.")
    c = JOB_COUNTS.c
    buckets = [c[f"le_{bound}"] for bound in DURATION_BUCKETS]
    with read_connection(settings["DATABASE_URL"]) as conn:
        rows = conn.execute(select(c.app, c.backend, c.state, func.sum(c.n), func.sum(c.timed),
                                   func.sum(c.elapsed_sum), *(func.sum(b) for b in buckets), func.count())
                            .group_by(c.app, c.backend, c.state)).all()
    if sum(row[-1] for row in rows) > COMPACT_ABOVE:
        try:
            compact_job_counts(settings["DATABASE_URL"])
        except Exception:       # the counts read are right anyway; the next scrape or reaper run folds them
            log.exception("metrics: folding job_counts failed")
    counts: dict[tuple[str, str], dict[str, int]] = {}
    histograms: dict[tuple[str, str], list[float]] = {}
    for app, backend, state, n, timed, total, *in_buckets, _rows in rows:
        counts.setdefault((app, backend), {})[state] = int(n)
        if state in TERMINAL_STATES:
            histogram = histograms.setdefault((app, backend), [0.0] * (2 + len(DURATION_BUCKETS)))
            for i, value in enumerate((timed, total, *in_buckets)):
                histogram[i] += float(value or 0)
    for (app, backend), by_state in sorted(counts.items()):
        if not any(by_state.values()):      # every job of the pair deleted: as if it never was
            continue
        for state in ALL_STATES:      # every state, zeros too: a gauge that vanishes is hard to alert on
            exp.sample("caesar_jobs", by_state.get(state, 0), {"app": app, "backend": backend, "state": state})
    for (app, backend), (timed, total, *in_buckets) in sorted(histograms.items()):
        if not timed:
            continue
        labels = {"app": app, "backend": backend}
        for bound, in_bucket in zip(DURATION_BUCKETS, in_buckets, strict=True):
            exp.sample("caesar_job_duration_seconds", in_bucket, {**labels, "le": bound}, "_bucket")
        exp.sample("caesar_job_duration_seconds", timed, {**labels, "le": "+Inf"}, "_bucket")
        exp.sample("caesar_job_duration_seconds", round(total, 6), labels, "_sum")
        exp.sample("caesar_job_duration_seconds", timed, labels, "_count")


def _notifications(exp: Exposition, settings: Mapping[str, Any]) -> None:
    """The notification outbox (caesar_rest/notify.py) by state, and the pending ones overdue by more than two sweep
    intervals: a number that grows means no control worker sends them (an index range over pending ones only)."""
    from datetime import timedelta

    from .models import DELIVERIES, utcnow

    exp.family("caesar_notifications", "gauge", "Notification deliveries by state (pending, delivered, failed).")
    exp.family("caesar_notifications_overdue", "gauge",
               "Pending notifications due for more than two NOTIFY_SWEEP_INTERVALs (is a control worker up?).")
    late = utcnow() - timedelta(seconds=2 * float(settings["NOTIFY_SWEEP_INTERVAL"]))
    with session_scope(settings["DATABASE_URL"]) as s:
        # from the counts kept by the database (migration 0011), not a GROUP BY over every delivery ever made
        counts = {str(state): int(n) for state, n in s.execute(
            select(NOTIFY_COUNTS.c.state, func.sum(NOTIFY_COUNTS.c.n)).group_by(NOTIFY_COUNTS.c.state)).all()}
        overdue = s.scalar(select(func.count()).select_from(DELIVERIES).where(
            DELIVERIES.c.state == "pending", DELIVERIES.c.next_try < late)) or 0
    for state in ("pending", "delivered", "failed"):
        exp.sample("caesar_notifications", counts.get(state, 0), {"state": state})
    exp.sample("caesar_notifications_overdue", overdue)


def queue_depths(celery, settings: Mapping[str, Any]) -> dict[str, tuple[int, int | None]]:
    """{pool: (messages waiting, consumers or None)} by a passive declare, which every kombu transport answers
    (RabbitMQ's queue.declare-ok, Redis LLEN, filesystem file count). A queue that does not exist holds nothing."""
    depths: dict[str, tuple[int, int | None]] = {}
    amqp = settings["BROKER_URL"].split(":", 1)[0] in ("amqp", "amqps", "pyamqp")
    with celery.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)
        for pool in settings["BACKENDS"]:
            channel = conn.channel()
            try:
                _name, messages, consumers = channel.queue_declare(queue=queue_name(settings, pool), passive=True)
                depths[pool] = (int(messages), int(consumers) if amqp else None)
            except conn.channel_errors:
                depths[pool] = (0, 0 if amqp else None)
            finally:
                try:
                    channel.close()
                except Exception:   # a 404 already closed it on the broker side
                    pass
    return depths


def _queues(exp: Exposition, celery, settings: Mapping[str, Any]) -> None:
    exp.family("caesar_broker_up", "gauge", "1 when the broker answered this scrape.")
    exp.family("caesar_queue_messages", "gauge", "Messages waiting in each worker pool's queue.")
    exp.family("caesar_queue_consumers", "gauge",
               "Consumers (worker processes' channels) on each pool's queue (RabbitMQ only).")
    try:
        depths = queue_depths(celery, settings)
    except Exception as exc:
        log.warning("metrics: broker unreachable: %s", exc.__class__.__name__)
        exp.sample("caesar_broker_up", 0)
        return
    exp.sample("caesar_broker_up", 1)
    for pool, (messages, consumers) in sorted(depths.items()):
        labels = {"pool": pool, "queue": queue_name(settings, pool)}
        exp.sample("caesar_queue_messages", messages, labels)
        if consumers is not None:
            exp.sample("caesar_queue_consumers", consumers, labels)


def _counters(exp: Exposition, settings: Mapping[str, Any]) -> None:
    for name, help_text in COUNTERS.items():
        exp.family(name, "counter", help_text)
    rows = store(settings).read()
    seen = {name for name, _labels_text, _value in rows}
    for name, labels_text, value in rows:
        if name in COUNTERS:
            exp.sample(name, value, labels_text)
    for name in ("caesar_uploads_total", "caesar_upload_bytes_total", "caesar_job_outputs_total"):
        if name not in seen:
            exp.sample(name, 0)


def render(settings: Mapping[str, Any], celery, version: str) -> str:
    exp = Exposition()
    exp.family("caesar_build_info", "gauge", "Version of the caesar-rest API answering.")
    exp.sample("caesar_build_info", 1, {"version": version})
    _jobs(exp, settings)
    _notifications(exp, settings)
    _queues(exp, celery, settings)
    _counters(exp, settings)
    return exp.render()
