"""Logging: one access line per request with its request id (X-Request-ID in and out), text or JSON (LOG_JSON);
every line logged while a request is served or a job runs in a worker carries that request's or job's id."""
from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from flask import Flask, Response, current_app, g, request
from werkzeug.wsgi import ClosingIterator

REQUEST_ID_HEADER = "X-Request-ID"
# A client's (or nginx's) id is kept when it is a plausible token; anything else is replaced, never echoed.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:@+=-]{1,128}$")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: What the current thread is doing: {"request_id": ...} while serving a request, {"job_id": ...} in a job task.
_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("caesar_log_context", default=None)
access_log = logging.getLogger("caesar.access")


def context() -> dict[str, str]:
    return _context.get() or {}


def _tag(record: logging.LogRecord) -> str:
    ctx = getattr(record, "caesar_context", None) or {}
    return " ".join(f"[{key.replace('_id', '')} {value}]" for key, value in ctx.items())


def _install_record_factory() -> None:
    """Every LogRecord remembers the context it was made in (formatting may happen later, elsewhere)."""
    current = logging.getLogRecordFactory()
    if getattr(current, "caesar", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        record.caesar_context = _context.get()
        return record

    factory.caesar = True   # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class ContextFormatter(logging.Formatter):
    """Wraps any formatter: the message gets a '[request <id>]' or '[job <id>]' prefix."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__(TEXT_FORMAT)
        self.inner = inner or logging.Formatter(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        tag = _tag(record)
        if not tag:
            return self.inner.format(record)
        msg, args = record.msg, record.args
        record.msg, record.args = f"{tag} {record.getMessage()}", None
        try:
            return self.inner.format(record)
        finally:
            record.msg, record.args = msg, args


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context ids and any access fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        doc.update(getattr(record, "caesar_context", None) or {})
        doc.update(getattr(record, "access", None) or {})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(settings: Mapping[str, Any]) -> None:
    """Root logging for the API process: LOG_LEVEL, text or JSON (LOG_JSON), context ids on every line."""
    _install_record_factory()
    root = logging.getLogger()
    root.setLevel(settings.get("LOG_LEVEL", "INFO"))
    if not root.handlers:            # like basicConfig: a host (pytest, Celery) that set up logging keeps it
        handler = logging.StreamHandler(sys.stderr)
        handler.caesar = True        # type: ignore[attr-defined]
        root.addHandler(handler)
    formatter = JsonFormatter() if settings.get("LOG_JSON") else ContextFormatter()
    for each in root.handlers:
        if getattr(each, "caesar", False):
            each.setFormatter(formatter)
    for noisy in ("alembic", "kombu.connection"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ---- the API: request ids and access lines ------------------------------------------------------------------

def _before() -> None:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    rid = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
    g.request_id = rid
    g.request_started = time.perf_counter()
    g.request_log_token = _context.set({"request_id": rid})


def _after(response: Response) -> Response:
    rid = g.get("request_id") or uuid.uuid4().hex
    response.headers[REQUEST_ID_HEADER] = rid
    if response.is_streamed and "X-Accel-Redirect" not in response.headers:
        response.headers.setdefault("X-Accel-Buffering", "no")   # generated on the fly: nginx passes it through
    started = g.get("request_started", time.perf_counter())
    fields = {"method": request.method, "path": request.path, "status": response.status_code,
              "endpoint": request.endpoint or "-", "remote": request.remote_addr or "-"}
    settings = current_app.config
    hooks = list(current_app.extensions.get("caesar_request_closed", ()))
    json_lines = bool(settings.get("LOG_JSON"))

    finished: list[bool] = []

    def done() -> None:
        # Logged when the response is closed, so streamed bodies count in the duration.
        if finished:
            return
        finished.append(True)
        fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 2)
        if response.content_length is not None:
            fields["bytes"] = response.content_length
        if "X-Accel-Redirect" in response.headers:
            fields["accel"] = response.headers["X-Accel-Redirect"]
        token = _context.set({"request_id": rid})
        try:
            if json_lines:
                access_log.info("%s %s %s", fields["method"], fields["path"], fields["status"],
                                extra={"access": fields})
            else:
                access_log.info(" ".join(f"{k}={v}" for k, v in fields.items()))
        finally:
            _context.reset(token)
        for hook in hooks:
            try:
                hook(settings=settings, request_fields=fields, response=response)
            except Exception:   # metrics must never break a response
                logging.getLogger(__name__).exception("request close hook failed")

    response.call_on_close(done)
    if response.direct_passthrough:
        # The server gets response.response itself and closes only that: hook there for streamed bodies
        # (tar.gz outputs). A file the server sends on its own (sendfile) is logged as it is handed over.
        body = response.response
        if hasattr(body, "read") or hasattr(body, "file") or hasattr(body, "filelike"):
            done()
        else:
            response.response = ClosingIterator(cast("Iterable[bytes]", body), [done])  # passthrough: bytes
    return response


def _teardown(_exc: BaseException | None = None) -> None:
    token = g.pop("request_log_token", None)
    if token is not None:
        try:
            _context.reset(token)
        except ValueError:   # set in another context (should not happen); leave it
            pass


def on_request_closed(app: Flask, hook) -> None:
    """Register hook(settings=..., request_fields=..., response=...), called after each access line (metrics)."""
    app.extensions.setdefault("caesar_request_closed", []).append(hook)


def init_app(app: Flask) -> None:
    """Register the request-id hooks first, so even a request refused by a later hook has an id."""
    configure(app.config)
    app.before_request_funcs.setdefault(None, []).insert(0, _before)
    app.after_request(_after)
    app.teardown_request(_teardown)


# ---- the workers: job ids on every line a job task logs -----------------------------------------------------

def install_worker_hooks() -> None:
    """Connect Celery signals (in every process that imports caesar_rest): a job task's lines carry its id."""
    try:
        from celery import signals
    except ImportError:   # pragma: no cover - celery is a hard dependency
        return
    _install_record_factory()
    if getattr(install_worker_hooks, "done", False):
        return
    install_worker_hooks.done = True   # type: ignore[attr-defined]

    def prerun(task_id=None, task=None, args=None, **_kw) -> None:
        name = getattr(task, "name", "") or ""
        if name.startswith("caesar.") and args and isinstance(args[0], str):
            task.request.caesar_log_token = _context.set({"job_id": args[0]})

    def postrun(task=None, **_kw) -> None:
        token = getattr(getattr(task, "request", None), "caesar_log_token", None)
        if token is not None:
            task.request.caesar_log_token = None
            try:
                _context.reset(token)
            except ValueError:
                _context.set(None)

    def wrap_formatters(logger=None, **_kw) -> None:
        from celery import current_app as celery_app

        as_json = bool((celery_app.conf.get("caesar_settings") or {}).get("LOG_JSON"))
        for handler in (logger or logging.getLogger()).handlers:
            if not isinstance(handler.formatter, (ContextFormatter, JsonFormatter)):
                handler.setFormatter(JsonFormatter() if as_json else ContextFormatter(handler.formatter))

    signals.task_prerun.connect(prerun, weak=False)
    signals.task_postrun.connect(postrun, weak=False)
    signals.after_setup_logger.connect(wrap_formatters, weak=False)
    signals.after_setup_task_logger.connect(wrap_formatters, weak=False)
