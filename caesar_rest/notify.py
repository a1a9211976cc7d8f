"""Notifications of job state changes, for every API: the event names and the states that produce them, the payload
renderers by format name, subscribe() (how a job of any kind gets a target), produce() (the state machine's hook
that writes the outbox in the transition's own transaction), the HMAC signature, and the hand-off of new deliveries
to the control worker once their transaction has committed. Sending them: workers/notify.py.

A transition writes a delivery for each subscription that asked for one of the events the new state produces; a
change that rolls back takes its deliveries with it, and one that commits always has them (the outbox). After the
commit the deliveries are published to the control queue; one whose message is lost is found by the sweep.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import event as sa_event, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from .errors import ValidationError
from .models import ATTEMPTS, DELIVERIES, JOBS, SUBSCRIPTIONS, Job, utcnow
from .states import RUNNING, SUCCESS, TERMINAL_STATES, JobState

log = logging.getLogger("caesar.notify")

#: Every event a subscription may ask for. `finished` is any terminal state, and every finished job is exactly one
#: of `succeeded` (SUCCESS) or `failed` (FAILURE, TIMED-OUT, CANCELED, ABORTED); `changed` is every state change.
EVENTS: tuple[str, ...] = ("started", "finished", "succeeded", "failed", "changed")
DEFAULT_EVENTS: tuple[str, ...] = ("started", "finished")
URL_MAX = 2048
SIGNATURE_HEADER, TIMESTAMP_HEADER = "X-Caesar-Signature", "X-Caesar-Timestamp"
EVENT_HEADER, DELIVERY_HEADER, JOB_HEADER = "X-Caesar-Event", "X-Caesar-Delivery", "X-Caesar-Job"
#: What a receiver should tolerate between the timestamp and its clock (replays older than this are refused).
SIGNATURE_TOLERANCE = 300


def events_for(state: JobState | str) -> tuple[str, ...]:
    """The events a job entering `state` produces, most specific first."""
    state = JobState(state)
    if state == RUNNING:
        return ("started", "changed")
    if state == SUCCESS:
        return ("succeeded", "finished", "changed")
    if state in TERMINAL_STATES:
        return ("failed", "finished", "changed")
    return ("changed",)


def matching(state: JobState | str, wanted: Sequence[str]) -> tuple[str, ...]:
    """The events of entering `state` that a subscription asked for, most specific first; empty: none."""
    return tuple(name for name in events_for(state) if name in wanted)


@dataclass(frozen=True)
class Event:
    """One change of a job as a subscription sees it: `name` the most specific event it asked for, `names` all of
    them (entering SUCCESS is succeeded, finished and changed: a subscription gets one delivery per change)."""

    name: str
    names: tuple[str, ...]
    state: str
    message: str
    at: datetime

    def header(self) -> dict[str, Any]:
        return {"event": self.name, "events": list(self.names), "at": self.at.isoformat() + "Z"}


# ---- payloads ---------------------------------------------------------------------------------------------------
Renderer = Callable[[Job, Event], dict[str, Any]]


def _caesar(job: Job, ev: Event) -> dict[str, Any]:
    """The job's caesar-rest status JSON (GET /job/<id>/status), plus the event."""
    from .jobs import to_status

    return {**ev.header(), **to_status(job), "app": job.app, "tag": job.tag}


def _tes(job: Job, ev: Event) -> dict[str, Any]:
    """The event, and the task in the TES BASIC view (a tesTask a strict client can validate) under "task"."""
    from .tes import render

    return {**ev.header(), "task": render(job, "BASIC")}


#: Payload formats by name: each renders a job (as it is just after the change) and the event to a JSON object.
#: Another API registers its own with register_renderer() (the OGC surface: ogc-status, ogc-results).
RENDERERS: dict[str, Renderer] = {"caesar": _caesar, "tes": _tes}


#: Formats registered by another module, by name: the module to import (it calls register_renderer) when the
#: format is first used in a process that has not imported it yet. Payloads are rendered where the change happens,
#: in the workers as much as in the API, so a format must be found in both.
RENDERER_MODULES: dict[str, str] = {"ogc-status": "caesar_rest.ogc.callbacks",
                                   "ogc-results": "caesar_rest.ogc.callbacks"}


def register_renderer(name: str, renderer: Renderer, module: str | None = None) -> None:
    """Make a payload format available to subscribe() under `name`. Call it at import of the module that defines
    the renderer, and give that module's import path as `module` (or list it in RENDERER_MODULES) so that a
    worker, which may never import it otherwise, finds the format when a job of that format changes state."""
    RENDERERS[name] = renderer
    if module:
        RENDERER_MODULES[name] = module


def renderer(name: str) -> Renderer | None:
    """The renderer of a format, importing its module (RENDERER_MODULES) if this process has not yet."""
    if name not in RENDERERS and name in RENDERER_MODULES:
        import importlib

        importlib.import_module(RENDERER_MODULES[name])
    return RENDERERS.get(name)


# ---- subscriptions ------------------------------------------------------------------------------------------------
class InvalidSubscription(ValidationError):
    """A notification target that cannot be used: a URL that is not http(s), names a refused address, an unknown
    event or format, too many targets. A 400 naming the field."""


def check_url(url: Any, settings: Mapping[str, Any], field: str = "url") -> str:
    """The target URL if it may be used; InvalidSubscription naming the problem otherwise. A literal address the
    egress rules refuse is refused here; a name is checked when it is resolved, at each delivery."""
    from .egress import Rules, literal_refusal

    if not isinstance(url, str) or not url:
        raise InvalidSubscription(f"'{field}' must be an http(s) URL string", field=field)
    if len(url) > URL_MAX or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise InvalidSubscription(f"'{field}' must be an http(s) URL of at most {URL_MAX} characters, without "
                                  "spaces or control characters", field=field)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port out of range or not a number)
    except ValueError as exc:
        raise InvalidSubscription(f"'{field}': {url!r} is not a URL: {exc}", field=field) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidSubscription(f"'{field}': {url!r} is not an http(s) URL (scheme {parts.scheme or 'missing'!r})",
                                  field=field)
    if not parts.hostname:
        raise InvalidSubscription(f"'{field}': {url!r} names no host", field=field)
    if "@" in parts.netloc:
        raise InvalidSubscription(f"'{field}': put no credentials in the URL (the requests are signed when the "
                                  "service has NOTIFY_SECRET)", field=field)
    refusal = literal_refusal(Rules.from_settings(settings), url)
    if refusal:
        raise InvalidSubscription(f"'{field}': {url} is refused: {refusal}", field=field)
    return url


def check_events(events: Any, field: str = "events") -> list[str]:
    if not isinstance(events, list | tuple) or not events or not all(isinstance(e, str) for e in events):
        raise InvalidSubscription(f"'{field}' must be a non-empty list of events, of {', '.join(EVENTS)}", field=field)
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise InvalidSubscription(f"'{field}': unknown event {unknown[0]!r}; events are {', '.join(EVENTS)}",
                                  field=field)
    return list(dict.fromkeys(events))


def subscribe(session: Session, job: Job, url: str, events: Sequence[str], fmt: str = "caesar", *,
              settings: Mapping[str, Any] | None = None, field: str = "notify") -> None:
    """Ask for `job`'s state changes to be POSTed to `url`.

    `events` are names from EVENTS (started, finished, succeeded, failed, changed); each state change the job
    makes from now on that produces one of them is delivered once to this URL, rendered by RENDERERS[fmt], as
    one JSON object, signed when NOTIFY_SECRET is set. Call it in the transaction that creates the job (after
    states.insert_job, before the caller commits): the job's first change cannot come before the commit. Several
    calls give several subscriptions (up to NOTIFY_MAX_SUBSCRIPTIONS a job); each is delivered in order.

    Raises InvalidSubscription (a ValidationError: HTTP 400) naming `field` and the problem when the URL is not
    http(s), carries credentials, is a literal address the egress rules refuse (loopback, private... unless
    EGRESS_ALLOWED_NETWORKS lists it), or an event or fmt is unknown; the caller's transaction should then be
    rolled back (nothing is half-created). A name that resolves to a refused address is not found here: each
    delivery attempt checks the addresses it connects to, and records a refusal as a failed attempt.
    `settings`: the service's settings (default: the Flask app's, inside a request). The caller commits."""
    if settings is None:
        from flask import current_app

        settings = current_app.config
    check_url(url, settings, f"{field}.url")
    names = check_events(events, f"{field}.events")
    if not isinstance(fmt, str) or renderer(fmt) is None:
        raise InvalidSubscription(f"'{field}.format': unknown format {fmt!r}; formats are {', '.join(RENDERERS)}",
                                  field=f"{field}.format")
    limit = int(settings.get("NOTIFY_MAX_SUBSCRIPTIONS") or 8)
    have = session.scalar(select(func.count()).select_from(SUBSCRIPTIONS)
                          .where(SUBSCRIPTIONS.c.job_id == job.id)) or 0
    if have >= limit:
        raise InvalidSubscription(f"'{field}': a job may have at most {limit} notification targets "
                                  "(NOTIFY_MAX_SUBSCRIPTIONS)", field=field)
    session.execute(SUBSCRIPTIONS.insert(), {"id": uuid.uuid4().hex, "job_id": job.id, "url": url, "events": names,
                                             "format": fmt, "created_at": utcnow()})
    session.execute(update(JOBS).where(JOBS.c.id == job.id).values(notify=True))


def parse_request(value: Any, field: str = "notify") -> list[dict[str, Any]]:
    """caesar-rest's `notify` field: {"url", "events"?, "format"?} or a list of them, as keyword sets for
    subscribe() (checked by it). events default to DEFAULT_EVENTS, format to caesar."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise InvalidSubscription(f"'{field}' must be an object {{url, events}} or a list of them", field=field)
    out = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]" if isinstance(value, list) else field
        if not isinstance(item, dict):
            raise InvalidSubscription(f"'{where}' must be an object {{\"url\": ..., \"events\": [...]}}", field=where)
        unknown = sorted(set(item) - {"url", "events", "format"})
        if unknown:
            raise InvalidSubscription(f"'{where}': unknown field {unknown[0]!r}; expected url, events, format",
                                      field=f"{where}.{unknown[0]}")
        fmt = item.get("format", "caesar")
        if not isinstance(fmt, str):
            raise InvalidSubscription(f"'{where}.format' must be a string", field=f"{where}.format")
        out.append({"url": item.get("url"), "events": item.get("events", list(DEFAULT_EVENTS)), "fmt": fmt,
                    "field": where})
    return out


# ---- the outbox: written by the transition -----------------------------------------------------------------------
_PENDING = "caesar_notify_pending"


def produce(session: Session, job_id: str, state: JobState | str, message: str, at: datetime) -> None:
    """Write the deliveries one change of a job makes (states._move calls it, for a job with subscriptions, in the
    transition's transaction). A renderer that fails gives a minimal payload: a notification never fails a job."""
    subs = session.execute(select(SUBSCRIPTIONS.c.id, SUBSCRIPTIONS.c.events, SUBSCRIPTIONS.c.format)
                           .where(SUBSCRIPTIONS.c.job_id == job_id).order_by(SUBSCRIPTIONS.c.created_at)).all()
    wanted = [(sub, names) for sub in subs if (names := matching(state, sub.events or []))]
    if not wanted:
        return
    job = session.execute(select(Job).where(Job.id == job_id)
                          .execution_options(populate_existing=True)).scalar_one()
    ids = []
    for sub, names in wanted:
        ev = Event(names[0], names, str(JobState(state)), message, at)
        try:
            render = renderer(sub.format)
            if render is None:
                raise LookupError(f"no renderer for the format {sub.format!r} in this process")
            payload = render(job, ev)
        except Exception:
            log.exception("job %s: the %s payload of a notification could not be rendered", job_id, sub.format)
            payload = {**ev.header(), "job_id": job_id, "state": ev.state, "status": message}
        ids.append(session.execute(DELIVERIES.insert().returning(DELIVERIES.c.id), {
            "subscription_id": sub.id, "job_id": job_id, "event": ev.name, "job_state": ev.state,
            "payload": payload, "state": "pending", "attempts": 0, "created_at": at, "next_try": at}).scalar_one())
    session.info.setdefault(_PENDING, []).extend(ids)


def check_settings(settings: Mapping[str, Any]) -> None:
    """The NOTIFY_* settings are usable (at start, in the API and in every worker: SettingsError naming the key)."""
    from .config import SettingsError

    for key, low in (("NOTIFY_ATTEMPTS", 1), ("NOTIFY_THREADS", 1), ("NOTIFY_MAX_SUBSCRIPTIONS", 1),
                     ("NOTIFY_BACKOFF", 0), ("NOTIFY_BACKOFF_MAX", 0)):
        if float(settings[key]) < low:
            raise SettingsError(f"setting {key} must be at least {low}, not {settings[key]!r}")
    for key in ("NOTIFY_TIMEOUT", "NOTIFY_SWEEP_INTERVAL"):
        if not float(settings[key]) > 0:
            raise SettingsError(f"setting {key} must be a number of seconds above 0, not {settings[key]!r}")
    secret = settings.get("NOTIFY_SECRET")
    if secret is not None and not secret:
        raise SettingsError("setting NOTIFY_SECRET is empty: give a key, or null for unsigned notifications")


# ---- the hand-off after commit --------------------------------------------------------------------------------------
Publisher = Callable[[Sequence[int]], None]
_publishers: dict[str, Publisher] = {}
_lock = threading.Lock()


def _key(url: Any) -> str:
    return make_url(url).render_as_string(hide_password=False) if isinstance(url, str) else \
        url.render_as_string(hide_password=False)


def register_publisher(database_url: str, publisher: Publisher) -> None:
    """What sends new deliveries of this database to the control queue (celery_app.make_celery registers it, in the
    API and in every worker). Without one, the sweep finds them."""
    with _lock:
        _publishers[_key(database_url)] = publisher


@sa_event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    ids = session.info.pop(_PENDING, None)
    if not ids:
        return
    try:
        publisher = _publishers.get(_key(session.get_bind().engine.url))
        if publisher is not None:
            publisher(ids)
    except Exception as exc:          # the sweep sends them: the job's commit stands
        log.warning("notifications %s not published (%s); the sweep will send them", ids, exc.__class__.__name__)


@sa_event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


# ---- signature ------------------------------------------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Caesar-Signature value: "sha256=" + hex HMAC-SHA256, keyed by NOTIFY_SECRET, of "<timestamp>." + body
    (the timestamp is X-Caesar-Timestamp, Unix seconds: a replayed request carries an old one)."""
    mac = hmac.new(secret.encode(), str(int(timestamp)).encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float | None = None,
           tolerance: float = SIGNATURE_TOLERANCE) -> bool:
    """What a receiver checks: the signature is the body's, and its timestamp within `tolerance` s of now."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def headers(secret: str | None, body: bytes, event: str, delivery_id: int, job_id: str,
            now: float | None = None) -> dict[str, str]:
    """The headers of one delivery request."""
    timestamp = int(time.time() if now is None else now)
    sent = {"Content-Type": "application/json", EVENT_HEADER: event, DELIVERY_HEADER: str(delivery_id),
            JOB_HEADER: job_id, TIMESTAMP_HEADER: str(timestamp)}
    if secret:
        sent[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    return sent


# ---- what the owner sees --------------------------------------------------------------------------------------------
def _iso(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value else None


def report(session: Session, job_id: str) -> list[dict[str, Any]]:
    """A job's subscriptions, each with its deliveries and every attempt (GET /job/<id>/notifications)."""
    subs = session.execute(select(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.job_id == job_id)
                           .order_by(SUBSCRIPTIONS.c.created_at)).all()
    deliveries = session.execute(select(DELIVERIES).where(DELIVERIES.c.job_id == job_id)
                                 .order_by(DELIVERIES.c.id)).all()
    attempts: dict[int, list[dict[str, Any]]] = {}
    if deliveries:
        for a in session.execute(select(ATTEMPTS).where(ATTEMPTS.c.delivery_id.in_([d.id for d in deliveries]))
                                 .order_by(ATTEMPTS.c.id)).all():
            attempts.setdefault(a.delivery_id, []).append({
                "at": _iso(a.at), "http_status": a.http_status, "error": a.error, "duration_ms": a.duration_ms,
                "next_try": _iso(a.next_try)})
    by_sub: dict[str, list[dict[str, Any]]] = {}
    for d in deliveries:
        by_sub.setdefault(d.subscription_id, []).append({
            "id": d.id, "event": d.event, "job_state": d.job_state, "state": d.state, "created": _iso(d.created_at),
            "next_try": _iso(d.next_try) if d.state == "pending" else None, "done": _iso(d.done_at),
            "attempts": attempts.get(d.id, [])})
    return [{"id": s.id, "url": s.url, "events": list(s.events or []), "format": s.format,
             "created": _iso(s.created_at), "deliveries": by_sub.get(s.id, [])} for s in subs]
