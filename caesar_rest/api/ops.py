"""Operations: health of every part the service needs (with latencies) and Prometheus metrics."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from flask import Response, jsonify
from flask_smorest import Blueprint
from sqlalchemy import text

from .. import __version__, metrics
from ..auth import is_authenticated_admin
from ..backends import health_check
from ..db import session_scope
from . import docs
from .common import celery, settings

blp = Blueprint("ops", __name__, description="Health and metrics")
_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="caesar-health")
# A check that hangs past HEALTH_TIMEOUT keeps its thread: it is not started again until it returns,
# so a stuck backend cannot fill the pool and starve the database and broker checks.
_in_flight: dict[tuple[int, str], Future] = {}
_in_flight_lock = threading.Lock()
_last_error: dict[tuple[int, str], str | None] = {}
log = logging.getLogger(__name__)


def _database(cfg: Mapping[str, Any]) -> None:
    with session_scope(cfg["DATABASE_URL"]) as s:
        s.execute(text("SELECT 1"))


def _broker(app) -> Callable[[], None]:
    def check() -> None:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    return check


def _result_store(cfg: Mapping[str, Any], app) -> Callable[[], Any]:
    url = cfg["RESULT_BACKEND"]

    def check() -> Any:
        if url.split(":", 1)[0] in ("redis", "rediss"):
            # Our own short-timeout client: Celery's retries would turn a dead Redis into a hung request.
            import redis

            client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2, retry_on_timeout=False)
            try:
                client.ping()
            finally:
                client.close()
            return None
        if url.startswith("file://"):
            folder = url[len("file://"):]
            if not os.access(folder, os.W_OK | os.X_OK):
                raise OSError(f"result folder {folder} is not writable")
        app.backend.get_task_meta("caesar-health-check")    # any result store: one cheap read
        return None
    return check


def _timed(check: Callable[[], Any]) -> Callable[[], dict]:
    def run() -> dict:
        start = time.perf_counter()
        try:
            detail = check()
            result: dict[str, Any] = {"status": "ok"}
            if isinstance(detail, Mapping):
                detail = dict(detail)
                result["status"] = "ok" if detail.pop("status", "ok") in ("ok", True) else "down"
                if detail:
                    result["detail"] = detail
        except Exception as exc:
            result = {"status": "down", "error": f"{exc.__class__.__name__}: {exc}"[:300]}
        result["latency_ms"] = round((time.perf_counter() - start) * 1000, 2)
        return result
    return run


def run_checks(cfg: Mapping[str, Any], app) -> tuple[str, dict[str, Any]]:
    """All checks at once, each bounded by HEALTH_TIMEOUT. Returns (ok | degraded | down, checks).
    down: a required part (database, broker, result store, a required backend) is down; degraded: another backend."""
    checks: dict[str, Callable[[], dict]] = {
        "database": _timed(lambda: _database(cfg)),
        "broker": _timed(_broker(app)),
        "result_store": _timed(_result_store(cfg, app)),
    }
    backends: dict[str, dict] = {}
    for name in cfg["BACKENDS"]:
        try:
            check = health_check(cfg, name)
        except Exception as exc:     # not loadable here (missing extra): that is its health
            backends[name] = {"status": "down", "error": f"{exc.__class__.__name__}: {exc}"[:300]}
            continue
        if check is None:
            backends[name] = {"status": "unchecked"}
        else:
            checks[f"backend:{name}"] = _timed(check)
    futures: dict[str, Future] = {}
    with _in_flight_lock:
        for key, fn in checks.items():
            previous = _in_flight.get((id(app), key))
            futures[key] = previous if previous is not None and not previous.done() else _pool.submit(fn)
            _in_flight[(id(app), key)] = futures[key]
    timeout = float(cfg.get("HEALTH_TIMEOUT") or 5)
    wait(futures.values(), timeout=timeout)
    results: dict[str, dict] = {}
    for key, future in futures.items():
        results[key] = future.result() if future.done() else {
            "status": "down", "error": f"no answer in {timeout:g} s", "latency_ms": round(timeout * 1000, 2)}
    for key in [k for k in results if k.startswith("backend:")]:
        backends[key.split(":", 1)[1]] = results.pop(key)
    required_backends = cfg.get("HEALTH_REQUIRED_BACKENDS")
    if required_backends is None:
        required_backends = [cfg["DEFAULT_BACKEND"]]
    for name, result in backends.items():
        result["required"] = name in required_backends
    for result in results.values():
        result["required"] = True
    _log_changes(app, {**results, **{f"backend:{k}": v for k, v in backends.items()}})
    every = [*results.values(), *backends.values()]
    status = "ok"
    if any(r["status"] == "down" for r in every):
        status = "down" if any(r["status"] == "down" and r["required"] for r in every) else "degraded"
    return status, {**results, "backends": dict(sorted(backends.items()))}


# What an anonymous caller sees of a check: error texts and details name internal hosts, URLs and paths, so they
# go to the log (run_checks) and to authenticated admins only.
PUBLIC_FIELDS = ("status", "latency_ms", "required")


def _public(checks: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in checks.items():
        if key == "backends":
            out[key] = _public(value)
        else:
            out[key] = {k: v for k, v in value.items() if k in PUBLIC_FIELDS}
    return out


def _log_changes(app, results: Mapping[str, Mapping[str, Any]]) -> None:
    """Log a check's error when it first appears or changes, and its recovery, not at every poll."""
    for key, result in results.items():
        error = result.get("error") if result.get("status") == "down" else None
        previous = _last_error.get((id(app), key))
        if error != previous:
            _last_error[(id(app), key)] = error
            if error:
                log.warning("health: %s is down: %s", key, error)
            elif previous:
                log.info("health: %s is up again", key)


HEALTH = {"type": "object", "required": ["status", "checks"], "properties": {
    "status": {"type": "string", "enum": ["ok", "degraded", "down"]}, "checks": {"type": "object"},
    "version": {"type": "string"}}}


@blp.route("/health", methods=["GET"])
@blp.doc(summary="Database, broker, result store and each enabled backend, with latencies; "
                 "503 when a required part is down",
         responses={"200": docs.json_response(HEALTH, "Every required part answers"),
                    "503": docs.json_response(HEALTH, "A required part is down"), **docs.ERRORS})
def health():
    status, checks = run_checks(settings(), celery())
    if not is_authenticated_admin():
        checks = _public(checks)
    response = jsonify({"status": status, "checks": checks, "version": __version__})
    response.status_code = 503 if status == "down" else 200
    response.headers["Cache-Control"] = "no-store"
    return response


@blp.route("/metrics", methods=["GET"])
@blp.doc(summary="Prometheus metrics: jobs by state, queue depth per pool, job durations, request and byte counters",
         responses={"200": {"description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}}}, **docs.ERRORS})
def metrics_view():
    body = metrics.render(settings(), celery(), __version__)
    return Response(body, mimetype=None, content_type=metrics.CONTENT_TYPE, headers={"Cache-Control": "no-store"})


def init_app(app) -> None:
    """Counters for every request (see caesar_rest.metrics): called by create_app after the logging hooks."""
    from .. import logs

    logs.on_request_closed(app, metrics.count_request)
