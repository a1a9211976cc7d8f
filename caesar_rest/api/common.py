"""Helpers shared by the blueprints: settings, the request's DB session, the Celery app."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import current_app, request
from sqlalchemy.orm import Session

from .. import db
from ..apps import Registry
from ..errors import BadRequest


def settings() -> dict[str, Any]:
    return current_app.config


def registry() -> Registry:
    return current_app.extensions["caesar_registry"]


def celery():
    return current_app.extensions["celery"]


@contextmanager
def session() -> Iterator[Session]:
    with db.session_scope(current_app.config["DATABASE_URL"]) as s:
        yield s


def json_body() -> Any:
    """The request's JSON document, or a 400/415 that says what is wrong with it."""
    mimetype = request.mimetype or ""
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        from ..errors import UnsupportedFormat
        raise UnsupportedFormat(f"Content-Type must be application/json, not {mimetype}")
    if not request.get_data(cache=True):
        raise BadRequest("The request body is empty; send a JSON document with Content-Type: application/json")
    try:
        return request.get_json(force=True)
    except Exception:
        raise BadRequest("The request body is not valid JSON") from None


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"Query parameter {name!r} must be an integer, not {raw!r}", parameter=name) from None
    if not low <= value <= high:
        raise BadRequest(f"Query parameter {name!r} must be between {low} and {high}", parameter=name)
    return value
