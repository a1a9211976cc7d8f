"""Helpers shared by the blueprints: settings, the request's DB session, the Celery app."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
import json
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
    limit = int(current_app.config.get("MAX_JSON_BYTES", 1024 * 1024))
    if request.content_length is not None and request.content_length > limit:
        from ..errors import PayloadTooLarge
        raise PayloadTooLarge(f"The JSON document is larger than {limit} bytes")
    raw = request.stream.read(limit + 1) if request.content_length is None else request.get_data(cache=True)
    if len(raw) > limit:
        from ..errors import PayloadTooLarge
        raise PayloadTooLarge(f"The JSON document is larger than {limit} bytes")
    if not raw:
        raise BadRequest("The request body is empty; send a JSON document with Content-Type: application/json")
    try:
        text = raw.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _Duplicate as exc:
        raise BadRequest(f"The JSON document repeats the field {exc.args[0]!r}", field=exc.args[0]) from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("The request body is not valid JSON") from None


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


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
