"""Operations: liveness and dependency health."""
from __future__ import annotations

import time

from flask import current_app, jsonify
from flask_smorest import Blueprint
from sqlalchemy import text

from .common import celery, session

blp = Blueprint("ops", __name__, description="Health")


def _timed(check) -> dict:
    start = time.perf_counter()
    try:
        check()
        return {"status": "ok", "latency_ms": round((time.perf_counter() - start) * 1000, 2)}
    except Exception as exc:
        return {"status": "down", "error": exc.__class__.__name__,
                "latency_ms": round((time.perf_counter() - start) * 1000, 2)}


def _database() -> None:
    with session() as s:
        s.execute(text("SELECT 1"))


def _broker() -> None:
    with celery().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


@blp.route("/health", methods=["GET"])
@blp.doc(summary="Database and broker health; 503 when a required part is down")
def health():
    checks = {"database": _timed(_database), "broker": _timed(_broker)}
    ok = all(c["status"] == "ok" for c in checks.values())
    response = jsonify({"status": "ok" if ok else "down", "checks": checks,
                        "version": current_app.config.get("API_VERSION")})
    response.status_code = 200 if ok else 503
    return response
