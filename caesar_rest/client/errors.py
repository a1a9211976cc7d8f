"""The client's exceptions: an answer of the service that is an error carries the service's JSON error body."""
from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Root of every error the client raises."""


class TransportError(ClientError):
    """The service could not be reached or did not answer in time (connection refused, DNS, timeout)."""


class APIError(ClientError):
    """The service answered with an error. `status` is the HTTP status, `error` the JSON error code
    ("invalid_option", "not_found"...), `message` what the service said, `option` the option, field or parameter it
    named (if any), `body` the whole JSON error."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.error = str(body.get("error") or "error")
        self.message = str(body.get("message") or body.get("status") or f"HTTP {status}")
        named = body.get("option") or body.get("field") or body.get("parameter")
        self.option: str | None = str(named) if named is not None else None
        super().__init__(f"{self.message} ({status} {self.error})")

    @property
    def code(self) -> int:
        """The error body's `code` (the HTTP status the service meant)."""
        code = self.body.get("code")
        return code if isinstance(code, int) else self.status


class BadRequest(APIError):
    """400: the request breaks a rule; `option` names what to fix."""


class InvalidOption(BadRequest):
    """400 invalid_option: an app option unknown, of the wrong type, out of range or missing. Raised by the service,
    or by the client itself before sending (client-side validation runs the service's own code)."""


class Unauthorized(APIError):
    """401: no usable credentials (see `caesar login`). `challenge` is the scheme the service asks for ("Basic",
    "Bearer"), from its WWW-Authenticate header."""

    challenge: str | None = None


class Forbidden(APIError):
    """403: the caller may not do this."""


class NotFound(APIError):
    """404: no such file, job or app for this caller."""


class Conflict(APIError):
    """409: the record's state does not allow it (a running job's output, a finished job canceled...)."""


class ServerError(APIError):
    """5xx: the service failed or a part of it is down; retrying later may help."""


_BY_STATUS: dict[int, type[APIError]] = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                         409: Conflict}


def api_error(status: int, body: Any, text: str = "", challenge: str | None = None) -> APIError:
    """The exception for an error answer: its class from the status (and the error code for invalid options)."""
    if not isinstance(body, dict):
        body = {"code": status, "error": "http_error", "message": (text or f"HTTP {status}").strip()[:500]}
    if status == 400 and body.get("error") == "invalid_option":
        return InvalidOption(status, body)
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    error = cls(status, body)
    if isinstance(error, Unauthorized) and challenge:
        error.challenge = challenge.split()[0].capitalize()
    return error
