"""Keyset page tokens for job listings (GET /jobs and TES ListTasks): a page ends at a (submit_date, id) pair, and
the next one starts below it. Unlike a page number, a token costs the same at any depth (an index range scan,
no OFFSET) and pages do not shift when jobs are submitted or deleted between two requests."""
from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Select, tuple_

from .errors import BadRequest
from .models import Job


def encode_token(job: Job | Row[Any]) -> str:
    """The token of the page ending at job (an ORM instance, or a row with submit_date and id)."""
    raw = json.dumps([job.submit_date.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, key: str = "parameter") -> tuple[datetime, str]:
    """The (submit_date, id) a token ends at; a 400 naming page_token (as `key` in the error body: TES says
    "field") when the server never gave it out."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        when, job_id = json.loads(raw)
        return datetime.fromisoformat(when), str(job_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise BadRequest("'page_token' is not a token this server gave out", **{key: "page_token"}) from None


def after_token(query: Select, token: str | None, key: str = "parameter") -> Select:
    """query, newest first, from just below the token's job on (from the start without a token)."""
    if token:
        when, last_id = decode_token(token, key)
        query = query.where(tuple_(Job.submit_date, Job.id) < tuple_(when, last_id))
    return query.order_by(Job.submit_date.desc(), Job.id.desc())
