"""A small typed client of slurmrestd's REST API (v0.0.38, Slurm 22.05), authenticated with JWT.

Every failure leaves as the backend error the runner knows: BackendUnavailable when waiting may help (no connection,
a timeout, slurmrestd up but its controller not answering), BackendRejected when Slurm refused a submission, and
BackendError for the rest, each carrying Slurm's own message. Classified by Slurm's error numbers, not their text.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import urllib3

from caesar_rest.errors import BackendError, BackendNotConfigured, BackendRejected, BackendUnavailable

# Slurm error numbers (slurm/slurm_errno.h) that say the controller could not be reached, not that the request was
# wrong: SLURM_ERROR (-1: what 22.05 answers while slurmctld is down), the communication and protocol errors, the
# socket errors, and the errnos of a refused or timed-out connection.
_UNSPECIFIED = -1
_TRANSIENT_RANGES = (range(1000, 2000), range(5000, 6000))
_TRANSIENT_ERRNOS = {110, 111, 113}      # ETIMEDOUT, ECONNREFUSED, EHOSTUNREACH
INVALID_JOB_ID = 2017                     # ESLURM_INVALID_JOB_ID: the controller does not know the job (any more)
_COMPLETED_ALREADY = {2020, 2021}         # ESLURM_TRANSITION_STATE_NO_UPDATE (completing), ESLURM_ALREADY_DONE


@dataclass(frozen=True)
class SlurmMessage:
    """One entry of a response's "errors" list."""

    number: int | None
    error: str
    description: str = ""

    def __str__(self) -> str:
        text = self.error if not self.description or self.description == self.error else \
            f"{self.error} ({self.description})"
        return f"{text} [Slurm error {self.number}]" if self.number is not None else text


@dataclass(frozen=True)
class Submitted:
    job_id: int
    messages: list[SlurmMessage] = field(default_factory=list)   # errors Slurm reported with an accepted job
    user_message: str = ""


def _messages(body: Mapping[str, Any]) -> list[SlurmMessage]:
    out = []
    for entry in body.get("errors") or []:
        if not isinstance(entry, Mapping):
            continue
        number = entry.get("error_number", entry.get("error_code", entry.get("errno")))
        out.append(SlurmMessage(number if isinstance(number, int) else None, str(entry.get("error") or "error"),
                                str(entry.get("description") or "")))
    return out


def transient(messages: list[SlurmMessage]) -> bool:
    return any(m.number == _UNSPECIFIED or m.number in _TRANSIENT_ERRNOS
               or any(m.number in r for r in _TRANSIENT_RANGES) for m in messages if m.number is not None)


class Token:
    """The X-SLURM-USER-TOKEN of one Slurm user: given in the settings, or made from the cluster's HS256 key.

    Made with PyJWT, already a core dependency (the API checks OIDC bearer tokens with it), rather than with hmac by
    hand: one JWS implementation in the project, whose encoding of the header and claims slurmctld's auth/jwt
    accepts as it accepts scontrol token's. A made token lives `lifetime` seconds and is made again a minute
    before it expires; slurmctld checks "exp", and "sun" names the user the request acts as."""

    def __init__(self, user: str, key_file: str | None = None, token: str | None = None,
                 lifetime: float = 1800) -> None:
        if not key_file and not token:
            raise BackendNotConfigured("the slurm backend needs 'jwt_key' (the cluster's HS256 key file) or 'token'")
        self.user, self.key_file, self.fixed, self.lifetime = user, key_file, token, max(120.0, lifetime)
        self._made: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def value(self) -> str:
        if self.fixed:
            return self.fixed
        with self._lock:
            now = time.time()
            if self._made is None or self._made[1] - now < 60:
                try:
                    key = Path(str(self.key_file)).read_bytes()
                except OSError as exc:
                    raise BackendNotConfigured(f"the Slurm JWT key {self.key_file} cannot be read: {exc}") from exc
                expires = now + self.lifetime
                claims = {"iat": int(now), "exp": int(expires), "sun": self.user}
                self._made = (jwt.encode(claims, key, algorithm="HS256"), expires)
            return self._made[0]


class SlurmRest:
    """slurmrestd at `url`, API `version`, acting as `token.user`. One connection pool per instance."""

    def __init__(self, url: str, token: Token, version: str = "v0.0.38", connect_timeout: float = 5,
                 read_timeout: float = 60, retries: int = 2) -> None:
        self.url = url.rstrip("/")
        self.version = version
        self.token = token
        # Connection errors only are retried here (nothing reached slurmrestd: safe for a submission too); read
        # errors of GETs once. Everything longer is the runner's (REMOTE_UNREACHABLE_TIMEOUT).
        retry = urllib3.Retry(total=retries, connect=retries, read=1, status=0, redirect=0, backoff_factor=0.2,
                              raise_on_status=False)
        # The read timeout is above Slurm's own: while slurmctld is down slurmrestd answers after its retries,
        # 9 to 18 s with the default MessageTimeout.
        self.http = urllib3.PoolManager(retries=retry, timeout=urllib3.Timeout(connect=connect_timeout,
                                                                               read=read_timeout))

    # ---- the calls ------------------------------------------------------------------------------------------------
    def ping(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/ping", "pinging the controller").get("pings") or [])

    def partition(self, name: str) -> dict[str, Any] | None:
        found = self._call("GET", f"/partition/{_path(name)}", f"reading partition {name!r}").get("partitions")
        return dict(found[0]) if found else None

    def submit(self, script: str, job: Mapping[str, Any]) -> Submitted:
        """POST /job/submit. A refusal (no job made) is BackendRejected with Slurm's message."""
        status, body = self._request("POST", "/job/submit", "submitting a job", {"script": script, "job": job})
        messages = _messages(body)
        job_id = body.get("job_id")
        if isinstance(job_id, int) and job_id > 0:
            return Submitted(job_id, messages, str(body.get("job_submit_user_msg") or ""))
        self._raise(status, messages, "submitting a job", rejected=True)
        raise BackendError(f"slurmrestd answered a submission with HTTP {status} and no job id")    # not reached

    def jobs(self) -> list[dict[str, Any]]:
        """GET /jobs: every job the controller knows (running, waiting, and those ended within MinJobAge)."""
        return [dict(j) for j in self._call("GET", "/jobs", "listing the jobs").get("jobs") or []]

    def job(self, job_id: int) -> dict[str, Any] | None:
        """The job's record; None when the controller does not know it (purged, or never was)."""
        status, body = self._request("GET", f"/job/{job_id}", f"reading job {job_id}")
        messages = _messages(body)
        jobs = body.get("jobs") or []
        if status == 200 and jobs:
            return dict(jobs[0])
        if any(m.number == INVALID_JOB_ID for m in messages) and not transient(messages):
            return None
        self._raise(status, messages, f"reading job {job_id}")
        return None

    def update(self, job_id: int, fields: Mapping[str, Any]) -> bool:
        """POST /job/{id}; False when the job has ended or is unknown (nothing left to update)."""
        status, body = self._request("POST", f"/job/{job_id}", f"updating job {job_id}", dict(fields))
        messages = _messages(body)
        if status == 200 and not messages:
            return True
        if any(m.number == INVALID_JOB_ID or m.number in _COMPLETED_ALREADY for m in messages) \
                and not transient(messages):
            return False
        self._raise(status, messages, f"updating job {job_id}")
        return False

    def cancel(self, job_id: int, signal: str | None = None) -> None:
        """DELETE /job/{id}: every step and process of the job (SIGKILL). Idempotent: an ended or unknown job is
        done. signal (e.g. "SIGTERM"): that signal to every process of the job instead, which it may outlive."""
        query = f"?signal={signal}" if signal else ""
        status, body = self._request("DELETE", f"/job/{job_id}{query}", f"cancelling job {job_id}")
        messages = _messages(body)
        if status == 200 and not messages:
            return
        if any(m.number in (INVALID_JOB_ID, *_COMPLETED_ALREADY) for m in messages) and not transient(messages):
            return
        self._raise(status, messages, f"cancelling job {job_id}")

    # ---- transport ------------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, what: str) -> dict[str, Any]:
        status, body = self._request(method, path, what)
        messages = _messages(body)
        if status != 200 or messages:
            self._raise(status, messages, what)
        return body

    def _request(self, method: str, path: str, what: str, payload: Any = None) -> tuple[int, dict[str, Any]]:
        url = f"{self.url}/slurm/{self.version}{path}"
        headers = {"X-SLURM-USER-NAME": self.token.user, "X-SLURM-USER-TOKEN": self.token.value(),
                   "Accept": "application/json"}
        body = None
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        try:
            response = self.http.request(method, url, body=body, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            raise BackendUnavailable(f"slurmrestd at {self.url} unreachable while {what}: {_reason(exc)}") from None
        if response.status in (502, 503, 504):
            raise BackendUnavailable(f"slurmrestd at {self.url} answered HTTP {response.status} while {what}")
        if response.status in (401, 403):
            raise BackendError(f"slurmrestd at {self.url} refused the credentials of Slurm user {self.token.user!r} "
                               f"while {what} (HTTP {response.status}): check jwt_key or token, and AuthAltTypes")
        if response.status == 404:
            raise BackendNotConfigured(f"slurmrestd at {self.url} does not serve {path} of API {self.version} "
                                       "(HTTP 404): check api_version and slurmrestd's -s openapi/ plugin")
        try:
            parsed = json.loads(response.data or b"{}")
        except ValueError:
            raise BackendUnavailable(f"slurmrestd at {self.url} answered {what} with HTTP {response.status} "
                                     f"and no JSON: {response.data[:120]!r}") from None
        return response.status, parsed if isinstance(parsed, dict) else {}

    def _raise(self, status: int, messages: list[SlurmMessage], what: str, rejected: bool = False) -> None:
        text = "; ".join(map(str, messages)) or f"HTTP {status} without a message"
        if transient(messages):
            raise BackendUnavailable(f"Slurm's controller did not answer slurmrestd at {self.url} while {what}: "
                                     f"{text}")
        if rejected:
            raise BackendRejected(f"Slurm refused the job: {text}")
        raise BackendError(f"Slurm answered an error while {what}: {text}")


def _path(segment: str) -> str:
    from urllib.parse import quote

    return quote(segment, safe="")


def _reason(exc: BaseException) -> str:
    """The innermost cause of a urllib3 error (connection refused, timed out), without the retry wrapper's text."""
    inner: BaseException = exc
    while True:
        nxt = getattr(inner, "reason", None) or inner.__cause__ or inner.__context__
        if not isinstance(nxt, BaseException) or nxt is inner:
            break
        inner = nxt
    return f"{inner.__class__.__name__}: {inner}"
