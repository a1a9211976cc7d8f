"""Helpers shared by the blueprints: settings, the request's DB session, the Celery app."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import current_app, request
from sqlalchemy.orm import Session

from .. import db, numbers
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


def json_body(limit: int | None = None, limit_setting: str = "MAX_JSON_BYTES") -> Any:
    """The request's JSON document, or a 400/413/415 that says what is wrong with it.
    Strict: the Content-Type must say JSON (a missing one too is a 415: a web page can send a body without one,
    or as text/plain, in a "simple" cross-site request that no CORS preflight stops, but never as JSON);
    repeated fields and NaN/Infinity are refused; the size is capped before parsing."""
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        from ..errors import UnsupportedFormat
        raise UnsupportedFormat(f"Content-Type must be application/json, not {mimetype or 'missing'}",
                                content_type=mimetype or None)
    if limit is None:
        limit = int(current_app.config.get(limit_setting) or 1024 * 1024)
    from ..errors import PayloadTooLarge
    too_large = PayloadTooLarge(f"The JSON document is larger than {limit} bytes ({limit_setting})")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    raw = request.stream.read(limit + 1) if request.content_length is None else request.get_data(cache=True)
    if len(raw) > limit:
        raise too_large
    if not raw:
        raise BadRequest("The request body is empty; send a JSON document with Content-Type: application/json")
    try:
        # Numbers stay as parsed (1e400 is inf): each field's validator refuses what it cannot use, naming the
        # field (caesar_rest.numbers.json_int / json_number).
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        if _SURROGATE_ESCAPE.search(raw):
            # "\ud800" alone is valid JSON but not text: PostgreSQL cannot store it (a 500 at the INSERT).
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        return doc
    except UnicodeEncodeError:
        raise BadRequest("The JSON document holds an unpaired UTF-16 surrogate escape (\\uD800-\\uDFFF), "
                         "which is not text") from None
    except _Duplicate as exc:
        raise BadRequest(f"The JSON document repeats the field {exc.args[0]!r}", field=exc.args[0]) from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("The request body is not valid JSON") from None


# A \u escape in the surrogate range; a valid pair becomes one character when parsed, a lone one stays.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


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


def int_arg(name: str, default: int, low: int, high: int, key: str = "parameter") -> int:
    """An integer query parameter (caesar_rest.numbers: ASCII digits, in range), or its default when absent.
    key: what the error body calls the parameter's name (TES says "field")."""
    raw = request.args.get(name)
    if raw is None:
        return default
    return numbers.parse_int(raw, f"Query parameter {name!r}", low, high, **{key: name})


def check_active_limit(s: Session, owner: str) -> None:
    """429 when the user already has as many queued or running jobs (and TES tasks) as allowed."""
    from sqlalchemy import func, select

    from ..auth import user_setting
    from ..errors import TooManyRequests
    from ..models import ACTIVE_STATES, Job

    limit = user_setting(owner, "max_active_jobs", current_app.config.get("MAX_ACTIVE_JOBS_PER_USER"))
    if limit is None:
        return
    mine = select(func.count()).select_from(Job).where(Job.owner == owner, Job.state.in_(ACTIVE_STATES))
    active = s.scalar(mine) or 0
    if active >= int(limit):
        raise TooManyRequests(f"You have {active} queued or running jobs and tasks, the most allowed; "
                              "wait for some to finish or cancel them", active_jobs=active, limit=int(limit))


def publish_or_withdraw(job_id: str, backend: str, what: str = "job") -> None:
    """Hand the job to its pool; if the broker refuses it, remove it again so nothing is half-created (503)."""
    import logging

    from sqlalchemy import delete

    from ..celery_app import publish_run
    from ..errors import ServiceUnavailable
    from ..models import Job

    try:
        publish_run(celery(), current_app.config, job_id, backend)
    except Exception as exc:
        logging.getLogger(__name__).error("broker refused %s %s: %s", what, job_id, exc.__class__.__name__)
        with session() as s:
            s.execute(delete(Job).where(Job.id == job_id))
        raise ServiceUnavailable(
            f"The job queue is unavailable; the {what} was not accepted, try again shortly") from exc
