"""Sending notifications (the outbox written by caesar_rest/notify.py), on the control worker.

Each delivery is tried until its receiver answers 2xx, with exponential backoff (NOTIFY_BACKOFF, doubling, up to
NOTIFY_BACKOFF_MAX) for NOTIFY_ATTEMPTS tries; every try is recorded. A subscription's deliveries go one at a
time and in order: a delivery waits while an earlier one of its subscription is pending, and the end of one hands
on to the next. The HTTP request runs in a thread of this process (NOTIFY_THREADS), so a receiver that never
answers holds a thread for NOTIFY_TIMEOUT, never the control queue (the reaper) nor another receiver's deliveries.
A try takes the delivery with a lease in one UPDATE, so a duplicate message (the sweep, a redelivery) sends
nothing twice; a worker that dies mid-try leaves a lease that runs out, and the sweep sends it again.
Connections go through caesar_rest.egress: a name that resolves to a refused address is a failed try that names
the rule (and is not retried: the rules will not change between tries).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import or_, select, update
from sqlalchemy.engine import CursorResult

from caesar_rest import egress, notify
from caesar_rest.db import session_scope
from caesar_rest.models import ATTEMPTS, DELIVERIES, SUBSCRIPTIONS, utcnow

log = logging.getLogger("caesar.notify")
MAX_REDIRECTS = 5
ANSWER_BYTES = 64 * 1024          # of a receiver's answer body read (and dropped): enough to keep the connection sane
#: Publishes delivery ids to the control queue, after `countdown` seconds (None: now).
Publish = Callable[[Sequence[int], float | None], None]

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def backoff(settings: Mapping[str, Any], attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: NOTIFY_BACKOFF, doubled each time, capped."""
    return min(float(settings["NOTIFY_BACKOFF"]) * 2 ** max(attempts - 1, 0), float(settings["NOTIFY_BACKOFF_MAX"]))


def submit(settings: Mapping[str, Any], publish: Publish, delivery_id: int) -> None:
    """Try a delivery in this process's thread pool (made after the fork: a prefork child has its own)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=max(1, int(settings["NOTIFY_THREADS"])),
                                       thread_name_prefix="notify")
            _pool_pid = os.getpid()
        pool = _pool
    pool.submit(_guarded, settings, publish, delivery_id)


def _guarded(settings: Mapping[str, Any], publish: Publish, delivery_id: int) -> None:
    try:
        deliver(settings, publish, delivery_id)
    except Exception:       # the database is away: the lease runs out and the sweep tries it again
        log.exception("notification %s: the try could not be recorded; the sweep will try it again", delivery_id)


def _lease(settings: Mapping[str, Any]) -> timedelta:
    """Longer than a try can take (a connect and an answer per hop, each NOTIFY_TIMEOUT), plus a margin."""
    return timedelta(seconds=2 * float(settings["NOTIFY_TIMEOUT"]) * (MAX_REDIRECTS + 1) + 30)


def _earlier_pending() -> Any:
    earlier = DELIVERIES.alias("earlier")
    return select(earlier.c.id).where(earlier.c.subscription_id == DELIVERIES.c.subscription_id,
                                      earlier.c.id < DELIVERIES.c.id, earlier.c.state == "pending").exists()


def deliver(settings: Mapping[str, Any], publish: Publish, delivery_id: int) -> str:
    """One try at a delivery, if it is due, pending, not leased and first of its subscription: 'delivered',
    'retry' (its next try is published with a countdown), 'failed' (given up), or 'skipped'."""
    url = settings["DATABASE_URL"]
    now = utcnow()
    with session_scope(url) as s:
        taken = cast(CursorResult[Any], s.execute(
            update(DELIVERIES).where(
                DELIVERIES.c.id == delivery_id, DELIVERIES.c.state == "pending",
                DELIVERIES.c.next_try <= now + timedelta(seconds=1),
                or_(DELIVERIES.c.leased_until.is_(None), DELIVERIES.c.leased_until < now),
                ~_earlier_pending()).values(leased_until=now + _lease(settings))
            .execution_options(synchronize_session=False))).rowcount
        if not taken:
            return "skipped"
        row = s.execute(select(DELIVERIES.c.job_id, DELIVERIES.c.event, DELIVERIES.c.payload,
                               DELIVERIES.c.attempts, DELIVERIES.c.subscription_id, SUBSCRIPTIONS.c.url)
                        .join(SUBSCRIPTIONS, SUBSCRIPTIONS.c.id == DELIVERIES.c.subscription_id)
                        .where(DELIVERIES.c.id == delivery_id)).one()
    status, error, permanent, took = attempt(settings, row.url, delivery_id, row.job_id, row.event, row.payload)
    attempts = row.attempts + 1
    done = error is None
    give_up = not done and (permanent or attempts >= int(settings["NOTIFY_ATTEMPTS"]))
    at = utcnow()
    next_try: datetime | None = None if done or give_up else at + timedelta(seconds=backoff(settings, attempts))
    state = "delivered" if done else "failed" if give_up else "pending"
    with session_scope(url) as s:
        s.execute(ATTEMPTS.insert(), {"delivery_id": delivery_id, "at": at, "http_status": status, "error": error,
                                      "duration_ms": took, "next_try": next_try})
        s.execute(update(DELIVERIES).where(DELIVERIES.c.id == delivery_id).values(
            state=state, attempts=attempts, leased_until=None, next_try=next_try,
            done_at=None if state == "pending" else at))
        following = None if state == "pending" else s.scalar(
            select(DELIVERIES.c.id).where(DELIVERIES.c.subscription_id == row.subscription_id,
                                          DELIVERIES.c.id > delivery_id, DELIVERIES.c.state == "pending")
            .order_by(DELIVERIES.c.id).limit(1))
    if state == "pending":
        log.info("notification %s (%s of job %s): try %d failed (%s); next in %g s", delivery_id, row.event,
                 row.job_id, attempts, error, backoff(settings, attempts))
        _publish(publish, [delivery_id], backoff(settings, attempts))
    else:
        (log.info if done else log.warning)("notification %s (%s of job %s): %s after %d tries%s", delivery_id,
                                            row.event, row.job_id, state, attempts, f" ({error})" if error else "")
        if following is not None:
            _publish(publish, [following], None)
    return "retry" if state == "pending" else state


def _publish(publish: Publish, ids: Sequence[int], countdown: float | None) -> None:
    try:
        publish(ids, countdown)
    except Exception as exc:      # the sweep finds them once due
        log.warning("notifications %s not published (%s); the sweep will send them", list(ids),
                    exc.__class__.__name__)


def attempt(settings: Mapping[str, Any], url: str, delivery_id: int, job_id: str, event: str,
            payload: Any) -> tuple[int | None, str | None, bool, float]:
    """POST one delivery: (HTTP status or None, error or None when delivered, whether retrying is useless,
    milliseconds taken). Every address used is checked by the egress rules (caesar_rest.egress)."""
    from urllib3.exceptions import HTTPError, NewConnectionError, TimeoutError as Urllib3Timeout

    timeout = float(settings["NOTIFY_TIMEOUT"])
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = notify.headers(settings.get("NOTIFY_SECRET"), body, event, delivery_id, job_id)
    rules = egress.Rules.from_settings(settings)
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    permanent = False
    response = None
    try:
        final, response = egress.http_request(rules, "POST", url, timeout, headers=headers, body=body,
                                              max_redirects=MAX_REDIRECTS)
        status = int(response.status)
        response.read(ANSWER_BYTES)
        if not 200 <= status < 300:
            error = f"HTTP {status} {response.reason or ''}".rstrip() + \
                (f" (redirected to {egress.redact(final)})" if final != url else "")
    except egress.EgressRefused as exc:
        error, permanent = f"refused by the egress rules: {exc}", True
    except egress.RedirectRefused as exc:
        error, permanent = str(exc), True
    except NewConnectionError as exc:           # a subclass of urllib3's TimeoutError, but not a time-out
        error = f"cannot connect: {_reason(exc)}"
    except (Urllib3Timeout, TimeoutError):
        error = f"no answer in {timeout:g} s"
    except (HTTPError, OSError) as exc:
        inner = _inner(exc)
        error = f"cannot connect: {_reason(inner)}" if isinstance(inner, ConnectionRefusedError) else \
            f"cannot send: {_reason(inner)}"
    except Exception as exc:    # anything else is a failed try too, recorded: a notification never escapes as an error
        log.exception("notification %s: unexpected error sending it", delivery_id)
        error = f"cannot send: {exc.__class__.__name__}: {exc}"
    finally:
        if response is not None:
            response.close()
    return status, error, permanent, round((time.monotonic() - started) * 1000, 1)


def _inner(exc: BaseException) -> BaseException:
    """The socket error inside urllib3's ProtocolError('Connection aborted.', error), else exc."""
    last = exc.args[-1] if exc.args else None
    return last if isinstance(last, OSError) else exc


def _reason(exc: BaseException) -> str:
    """An error as a phrase: an OSError's strerror (connection refused), an urllib3 error without the connection
    object's repr it starts with."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    text = str(exc)
    if text.startswith("<") and ">: " in text:
        text = text.split(">: ", 1)[1]
    return text or exc.__class__.__name__


def sweep(settings: Mapping[str, Any], publish: Publish) -> int:
    """Publish again each pending delivery that is first of its subscription, overdue by a sweep interval and not
    leased (its message was lost: a broker restart, a worker that died with it in its pool). Returns how many."""
    now = utcnow()
    late = now - timedelta(seconds=float(settings["NOTIFY_SWEEP_INTERVAL"]))
    with session_scope(settings["DATABASE_URL"]) as s:
        ids = list(s.scalars(select(DELIVERIES.c.id).where(
            DELIVERIES.c.state == "pending", DELIVERIES.c.next_try <= late,
            or_(DELIVERIES.c.leased_until.is_(None), DELIVERIES.c.leased_until < now),
            ~_earlier_pending()).order_by(DELIVERIES.c.id).limit(1000)))
    if ids:
        log.info("notify sweep: %d overdue deliveries sent again", len(ids))
        _publish(publish, ids, None)
    return len(ids)
