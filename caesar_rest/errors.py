"""The exception tree; API-facing errors carry their HTTP code and become JSON in one handler."""
from __future__ import annotations

from typing import Any

from werkzeug import exceptions as wexc


class CaesarError(Exception):
    """Root of every caesar-rest error."""


# ---- worker-side errors (no HTTP status: a job's end records them) -------------------------------------------
class BackendError(CaesarError):
    """A permanent backend problem: the job cannot run (bad image, rejected submission...)."""


class BackendUnavailable(BackendError):
    """A transient problem reaching the backend (connection refused, 5xx): retried with backoff."""


class BackendNotConfigured(BackendError):
    """The backend is named but its settings or optional dependency are missing."""


class TransferError(CaesarError):
    """A TES input or output could not be transferred."""


class ApiError(wexc.HTTPException, CaesarError):
    """An error a client caused or must know about; rendered as JSON by errors.register()."""

    code = 400
    error = "bad_request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def payload(self) -> dict[str, Any]:
        # "status" keeps the original caesar-rest message key; "message" is the conventional one.
        return {"code": self.code, "error": self.error, "status": self.message, "message": self.message, **self.details}


class BadRequest(ApiError):
    code, error = 400, "bad_request"


class InvalidOption(ApiError):
    code, error = 400, "invalid_option"


class Forbidden(ApiError):
    code, error = 403, "forbidden"


class NotFound(ApiError):
    code, error = 404, "not_found"


class Conflict(ApiError):
    code, error = 409, "conflict"


class LengthRequired(ApiError):
    code, error = 411, "length_required"


class PayloadTooLarge(ApiError):
    code, error = 413, "payload_too_large"


class UnsupportedFormat(ApiError):
    code, error = 415, "unsupported_format"


class TooManyRequests(ApiError):
    code, error = 429, "too_many_requests"


class ServiceUnavailable(ApiError):
    code, error = 503, "service_unavailable"


class InsufficientStorage(ApiError):
    code, error = 507, "insufficient_storage"


def _http_error(exc: wexc.HTTPException):
    from flask import jsonify

    if isinstance(exc, ApiError):
        body = exc.payload()
    else:
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
    response = jsonify(body)
    response.status_code = body["code"]
    if getattr(exc, "www_authenticate", None):
        response.headers["WWW-Authenticate"] = exc.www_authenticate
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
    """Every HTTP error, ours or werkzeug's, leaves as JSON; unexpected ones as a 500 JSON without internals."""
    from flask import jsonify
    from sqlalchemy.exc import OperationalError, InterfaceError

    app.register_error_handler(wexc.HTTPException, _http_error)

    def db_down(exc: Exception):
        app.logger.error("database unavailable: %s", exc.__class__.__name__)
        return _http_error(ServiceUnavailable("The job database is unavailable; try again shortly"))

    app.register_error_handler(OperationalError, db_down)
    app.register_error_handler(InterfaceError, db_down)

    def unexpected(exc: Exception):
        app.logger.exception("unhandled error")
        response = jsonify({"code": 500, "error": "internal_error", "status": "Internal server error", "message": "Internal server error"})
        response.status_code = 500
        return response

    app.register_error_handler(Exception, unexpected)
