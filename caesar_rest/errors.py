"""The exception tree: domain errors that know nothing of HTTP, and the one table (STATUS) that gives each an HTTP
status and a JSON error code, used by register() alone. The API, the domain modules and the workers raise the
same classes; werkzeug's own errors (unknown route, wrong method, body too large) are rendered in the same shape."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from werkzeug import exceptions as wexc


class CaesarError(Exception):
    """Root of every caesar-rest error. `message` says what went wrong, to a user or in a job's end; `details`
    are what a client can act on (the field, the limit...), extra JSON fields when the API renders the error."""

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


# ---- a client's doing (4xx: the message is for the user) --------------------------------------------------------
class ValidationError(CaesarError):
    """A request that breaks a rule (malformed, out of range, an unknown field...): it names what to fix."""


BadRequest = ValidationError     # the name most raise sites use


class InvalidOption(ValidationError):
    """An app option the app does not declare, of the wrong type, or out of range."""


class Unauthorized(CaesarError):
    """No usable credentials. `challenge` is the scheme (and realm) a client should answer with, if any."""

    def __init__(self, message: str, challenge: str | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.challenge = challenge


class Forbidden(CaesarError):
    """The caller is known but may not do this (a cross-site request, another user's record...)."""


class NotFound(CaesarError):
    """No such record (file, job, app, task) for this caller, or its data is gone."""


class Conflict(CaesarError):
    """The record is in a state that does not allow this (a finished job canceled, a file in use...)."""


class Gone(NotFound):
    """The record existed and is no more (a resumable upload past its expiry)."""


class PreconditionFailed(ValidationError):
    """A request without what the protocol requires first (tus: the Tus-Resumable version this server speaks)."""


class ChecksumMismatch(ValidationError):
    """A body whose checksum is not the one its sender declared (tus's Upload-Checksum); nothing of it is kept."""


class LengthRequired(CaesarError):
    """A body whose length must be known ahead was sent without one."""


class PayloadTooLarge(CaesarError):
    """A body (file, JSON document) over the size this server accepts."""


class UnsupportedFormat(CaesarError):
    """A body or file of a type or format this server does not take."""


class TooManyRequests(CaesarError):
    """The user already has as many queued or running jobs as allowed (MAX_ACTIVE_JOBS_PER_USER)."""


class InsufficientStorage(CaesarError):
    """No room to store: the user's byte quota (max_stored_bytes), a full disk, or the object store refused."""


# ---- the service's side ------------------------------------------------------------------------------------------
class ServiceUnavailable(CaesarError):
    """Something the request needs is down or not enabled (database, broker, a backend): try again later."""


class StorageError(CaesarError):
    """An S3 operation failed; the message says which object and why."""


class StorageUnavailable(ServiceUnavailable, StorageError):
    """An S3 operation behind an API request failed: the client learns why and may retry."""


class BackendError(CaesarError):
    """A permanent backend problem: the job cannot run (bad image, rejected submission...)."""


class BackendUnavailable(BackendError):
    """A transient problem reaching the backend (connection refused, 5xx): retried with backoff."""


class BackendNotConfigured(BackendError):
    """The backend is named but its settings or optional dependency are missing."""


class BackendRejected(BackendError):
    """The backend refused the job as submitted (invalid request, unknown queue or image): retrying cannot help."""


class TransferError(CaesarError):
    """A TES input or output could not be transferred."""


# ---- the one mapping -----------------------------------------------------------------------------------------------
# Each class to (HTTP status, JSON "error"). A class not listed answers as its nearest listed ancestor (MRO order).
# "internal_error" entries are the service's own faults: logged with their traceback, answered without the message
# (it may name hosts, paths or keys); the worker-side classes are here only for errors that escape into a request.
STATUS: dict[type[CaesarError], tuple[int, str]] = {
    ValidationError: (400, "bad_request"),
    InvalidOption: (400, "invalid_option"),
    Unauthorized: (401, "unauthorized"),
    Forbidden: (403, "forbidden"),
    NotFound: (404, "not_found"),
    Conflict: (409, "conflict"),
    Gone: (410, "gone"),
    PreconditionFailed: (412, "precondition_failed"),
    ChecksumMismatch: (460, "checksum_mismatch"),     # tus 1.0's checksum extension
    LengthRequired: (411, "length_required"),
    PayloadTooLarge: (413, "payload_too_large"),
    UnsupportedFormat: (415, "unsupported_format"),
    TooManyRequests: (429, "too_many_requests"),
    ServiceUnavailable: (503, "service_unavailable"),
    InsufficientStorage: (507, "insufficient_storage"),
    StorageUnavailable: (503, "service_unavailable"),
    StorageError: (500, "internal_error"),
    BackendError: (500, "internal_error"),
    BackendUnavailable: (500, "internal_error"),
    BackendNotConfigured: (500, "internal_error"),
    BackendRejected: (500, "internal_error"),
    TransferError: (500, "internal_error"),
    CaesarError: (500, "internal_error"),
}
INTERNAL = {"code": 500, "error": "internal_error", "status": "Internal server error",
            "message": "Internal server error"}


def status_of(cls: type[CaesarError]) -> tuple[int, str]:
    """(HTTP status, error code) of an error class: its own entry in STATUS, else its nearest ancestor's."""
    for klass in cls.__mro__:
        if klass in STATUS:
            return STATUS[klass]
    raise TypeError(f"{cls.__name__} is not a CaesarError")


def body_of(exc: CaesarError) -> dict[str, Any]:
    """The JSON body of an error; "status" keeps the original caesar-rest message key, "message" the usual one."""
    code, error = status_of(type(exc))
    if error == "internal_error":
        return dict(INTERNAL)
    return {"code": code, "error": error, "status": exc.message, "message": exc.message, **exc.details}


#: Path prefixes whose errors another surface renders from the same body (OGC API - Processes: RFC 7807 exceptions,
#: caesar_rest/ogc/problems.py): prefix -> render(body) -> response.
SURFACE_RENDERERS: dict[str, Callable[[dict[str, Any]], Any]] = {}


def _json(body: dict[str, Any]):
    from flask import has_request_context, jsonify, request

    if has_request_context():
        for prefix, render in SURFACE_RENDERERS.items():
            if request.path == prefix or request.path.startswith(prefix + "/"):
                return render(body)
    response = jsonify(body)
    response.status_code = body["code"]
    return response


def _caesar_error(exc: CaesarError):
    body = body_of(exc)
    if body["error"] == "internal_error":
        from flask import current_app

        current_app.logger.error("unhandled error", exc_info=exc)
    response = _json(body)
    challenge = getattr(exc, "challenge", None)
    if challenge:
        response.headers["WWW-Authenticate"] = challenge
    return response


def _http_error(exc: wexc.HTTPException):
    """werkzeug's own errors (and flask-smorest's, which are werkzeug's) in the same JSON shape."""
    code = exc.code or 500
    message = exc.description or exc.name
    if code == 413:
        message = "The request body is larger than this server accepts"
    body = {"code": code, "error": exc.name.lower().replace(" ", "_"), "status": message, "message": message}
    # flask-smorest/webargs put field errors in exc.data["messages"]
    messages = getattr(exc, "data", {}).get("messages") if hasattr(exc, "data") else None
    if messages:
        body["errors"] = messages
        if code == 422:
            body["code"], body["error"] = 400, "bad_request"
            body["status"] = body["message"] = f"Invalid request: {_flatten(messages)}"
    response = _json(body)
    if isinstance(exc, wexc.Unauthorized) and exc.www_authenticate:
        response.headers["WWW-Authenticate"] = ", ".join(str(w) for w in exc.www_authenticate)
    if isinstance(exc, wexc.MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _flatten(messages: Any, prefix: str = "") -> str:
    if isinstance(messages, dict):
        parts = []
        for key, value in messages.items():
            name = key if key not in ("json", "query", "form", "files") else ""
            parts.append(_flatten(value, f"{prefix}{name}" if not prefix or not name else f"{prefix}.{name}"))
        return "; ".join(p for p in parts if p)
    if isinstance(messages, list):
        text = " ".join(str(m) for m in messages)
        return f"{prefix}: {text}" if prefix else text
    return f"{prefix}: {messages}" if prefix else str(messages)


def register(app) -> None:
    """Every error, ours or werkzeug's, leaves as JSON; unexpected ones as a 500 JSON without internals."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    app.register_error_handler(CaesarError, _caesar_error)
    app.register_error_handler(wexc.HTTPException, _http_error)

    def db_down(exc: Exception):
        app.logger.error("database unavailable: %s", exc.__class__.__name__)
        return _caesar_error(ServiceUnavailable("The job database is unavailable; try again shortly"))

    app.register_error_handler(OperationalError, db_down)
    app.register_error_handler(InterfaceError, db_down)

    def unexpected(exc: Exception):
        app.logger.error("unhandled error", exc_info=exc)
        return _json(dict(INTERNAL))

    app.register_error_handler(Exception, unexpected)
