"""Pulsar backend: jobs run on Galaxy Pulsar servers over Pulsar's REST interface, without holding a worker slot."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shlex
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from .base import (
    CANCELLED,
    EXITED,
    FAILED,
    LOST,
    QUEUED,
    RUNNING,
    BackendBase,
    BackendError,
    BackendNotConfigured,
    BackendStatus,
    BackendUnavailable,
    JobSpec,
    translate_errors,
)

try:
    import requests
except ImportError as exc:          # the `pulsar` extra
    raise ImportError(f"the Pulsar backend needs requests: pip install 'caesar-rest[pulsar]' ({exc})") from exc

log = logging.getLogger("caesar.backends.pulsar")

#: Pulsar job states (pulsar.managers.status) → BackendStatus states; terminal ones are handled in poll().
_ACTIVE = {"preprocessing": QUEUED, "queued": QUEUED, "running": RUNNING, "postprocessing": RUNNING}
_RETRY_STATUS = {502, 503, 504}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INPUTS = "inputs"                   # the runner stages inputs under <workdir>/inputs/: never an output
DIRS_MANIFEST = "caesar_dirs"       # written by the command into Pulsar's metadata dir: the job's directories
SUMS_MANIFEST = "caesar_sha256"     # and `sha256sum` of its files, which every download is checked against


class _Scrubbed(Exception):
    """A transport error retold without its URL, whose query string carries the private token."""


class _RedactTokens(logging.Filter):
    """urllib3 logs request lines (query string included) at DEBUG: never let a private token through."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(token in message for token in self.tokens):
            for token in self.tokens:
                message = message.replace(token, "***")
            record.msg, record.args = message, None
        return True


_redactor = _RedactTokens()
logging.getLogger("urllib3.connectionpool").addFilter(_redactor)


class PulsarBackend(BackendBase):
    """Stages inputs to a Pulsar server, launches argv there as one quoted command line, polls, fetches, cleans.

    Settings, BACKENDS["pulsar"]:
        servers: {name: {url, private_token, app_path}}   app_path: PATH prefix for the apps on that server
        default_server: name                               optional when only one server is configured
        retries: 3, backoff: 0.5                           per call: connection errors and 502/503/504
        connect_timeout: 5, read_timeout: 60               seconds
    A job picks a server with backend_options {"server": name}, an app in its YAML (backend_options.pulsar).
    The handle is "<server>:<pulsar job id>": any worker process can follow the job after a restart.
    """

    name: ClassVar[str] = "pulsar"
    blocking: ClassVar[bool] = False
    job_options: ClassVar[tuple[str, ...]] = ("server",)

    @staticmethod
    def check_job_options(backend_settings: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
        server = options.get("server")
        known = sorted((backend_settings or {}).get("servers") or {})
        if server is not None and (not isinstance(server, str) or server not in known):
            return f"Unknown Pulsar server {server!r}; known servers: {', '.join(known) or 'none configured'}"
        return None

    def __init__(self, settings: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        servers = options.get("servers")
        if not isinstance(servers, Mapping) or not servers:
            raise BackendNotConfigured("BACKENDS.pulsar needs 'servers': {name: {url, private_token, app_path}}")
        self.servers: dict[str, dict[str, Any]] = {}
        for name, conf in servers.items():
            if not isinstance(conf, Mapping) or not conf.get("url"):
                raise BackendNotConfigured(f"Pulsar server {name!r} has no 'url' in BACKENDS.pulsar.servers")
            self.servers[name] = {"url": str(conf["url"]).rstrip("/"), "token": conf.get("private_token") or None,
                                  "app_path": conf.get("app_path") or None}
            if self.servers[name]["token"]:
                _redactor.tokens.add(str(self.servers[name]["token"]))
        self.default_server = options.get("default_server") or (next(iter(servers)) if len(servers) == 1 else None)
        if self.default_server not in self.servers:
            raise BackendNotConfigured(f"BACKENDS.pulsar.default_server {self.default_server!r} is not one of "
                                       f"{sorted(self.servers)}")
        self.retries = max(0, int(options.get("retries", 3)))
        self.backoff = float(options.get("backoff", 0.5))
        self.timeout = (float(options.get("connect_timeout", 5)), float(options.get("read_timeout", 60)))
        self.sessions: dict[str, requests.Session] = {}
        self.final: dict[str, dict[str, Any]] = {}     # handle → Pulsar's last (complete) status

    # ---- Backend protocol ---------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Each configured server answers a status request with its private token (GET /health): one try each,
        no retries, a few seconds at most. The probe's job id is one no job ever has; Pulsar answers it 'lost'
        and creates nothing."""
        servers: dict[str, str] = {}
        down: list[str] = []
        for name, conf in self.servers.items():
            query = {"private_token": conf["token"]} if conf["token"] else {}
            try:
                with self._transport(lambda problem: problem):
                    response = self._session(name).get(f"{conf['url']}/jobs/caesar-health-probe/status",
                                                       params=query, timeout=(2, 3))
            except BackendUnavailable as exc:
                problem: str | None = str(exc)
            else:
                response.close()
                problem = None if response.status_code < 400 else f"HTTP {response.status_code} {response.reason}"
                if response.status_code in (401, 403):
                    problem = f"{problem}: the private token was refused"
            servers[name] = problem or "ok"
            if problem:
                down.append(f"{name} ({conf['url']}) {problem}")
        if down:
            raise BackendUnavailable("Pulsar server " + "; ".join(down))
        return {"servers": servers}

    def submit(self, job: JobSpec) -> str:
        server = job.options.get("server") or self.default_server
        if server not in self.servers:
            raise BackendError(f"Unknown Pulsar server {server!r}; known servers: {', '.join(sorted(self.servers))}")
        pulsar_id = f"caesar-{job.job_id}-{secrets.token_hex(3)}"     # a re-submitted job never meets its past
        handle = f"{server}:{pulsar_id}"
        layout = self._json(server, "POST", "/jobs", {"job_id": pulsar_id})
        try:
            for item in job.inputs:
                rel = _relative(item.relpath, "input")
                with open(Path(job.workdir) / rel, "rb") as fh:
                    self._call(server, "POST", f"/jobs/{pulsar_id}/files", {"name": rel, "type": "input"},
                               data=fh, what=f"uploading {rel}")
            command = self._command_line(job, server, layout)
            self._call(server, "POST", f"/jobs/{pulsar_id}/submit", {"command_line": command})
        except Exception as exc:
            try:
                self.cleanup(handle)
            except BackendError as again:
                raise BackendError(f"{exc}; removing the half-made job {pulsar_id} from {server} also failed: "
                                   f"{again}") from exc
            raise
        log.info("job %s submitted to Pulsar server %s as %s", job.job_id, server, pulsar_id)
        return handle

    def poll(self, handle: str) -> BackendStatus:
        try:
            server, pulsar_id = self._split(handle)
            state = self._status(server, pulsar_id)
        except BackendUnavailable:
            raise                       # the runner retries until REMOTE_UNREACHABLE_TIMEOUT
        except BackendError as exc:     # e.g. the token or the server list changed: the job cannot be followed
            return BackendStatus(FAILED, reason=str(exc))
        status = state.get("status")
        if status in _ACTIVE:
            return BackendStatus(_ACTIVE[status], host=server)
        if status == "lost":
            return BackendStatus(LOST, reason=f"Pulsar server {server} does not know job {pulsar_id} any more "
                                              "(restarted without its staging directory, or the job was removed)")
        self.final[handle] = state
        returncode = state.get("returncode") if isinstance(state.get("returncode"), int) else None
        if status == "cancelled":
            return BackendStatus(CANCELLED, exit_code=returncode, host=server,
                                 reason=f"Job was cancelled on Pulsar server {server}")
        if status == "complete" and returncode is not None:
            return BackendStatus(EXITED, exit_code=returncode, host=server)
        detail = _last_line(str(state.get("job_stderr") or state.get("stderr") or ""))
        return BackendStatus(FAILED, exit_code=returncode, host=server,
                             reason=f"Pulsar server {server} reports job {pulsar_id} {status or 'in no state'}"
                                    f"{' without an exit status' if status == 'complete' else ''}"
                                    f"{': ' + detail if detail else ''}")

    def cancel(self, handle: str) -> None:
        server, pulsar_id = self._split(handle)
        self._call(server, "PUT", f"/jobs/{pulsar_id}/cancel", what="cancelling the job")

    def fetch_outputs(self, handle: str, dest: Path) -> None:
        server, pulsar_id = self._split(handle)
        state = self.final.get(handle) or self._status(server, pulsar_id)     # cancelled or timed out: ask
        if state.get("status") == "lost":
            return                      # nothing left on the server; the job's status says so
        dest = Path(dest)
        metadata = set(state.get("metadata_directory_contents") or [])
        expected = self._sums(server, pulsar_id) if SUMS_MANIFEST in metadata else {}
        for name in state.get("working_directory_contents") or []:
            rel = _relative(name, "output")
            if PurePosixPath(rel).parts[0] == INPUTS or rel in ("stdout.log", "stderr.log"):
                continue
            self._download(server, pulsar_id, rel, "output_workdir", dest / rel, expected.get(rel))
        if DIRS_MANIFEST in metadata:
            listing = self._call(server, "GET", f"/jobs/{pulsar_id}/files",
                                 {"name": DIRS_MANIFEST, "type": "output_metadata"}).content
            for raw in listing.split(b"\0"):
                name = os.fsdecode(raw).removeprefix("./")
                if name and PurePosixPath(name).parts[0] != INPUTS:
                    (dest / _relative(name, "output")).mkdir(parents=True, exist_ok=True)   # empty ones too
        for stream, local in (("job_stdout", "stdout.log"), ("job_stderr", "stderr.log")):
            if stream in metadata:
                self._download(server, pulsar_id, stream, "output_metadata", dest / local)
            else:                       # cancelled before it ran
                (dest / local).write_text(state.get(stream) or "", encoding="utf-8")

    def cleanup(self, handle: str) -> None:
        server, pulsar_id = self._split(handle)
        self._call(server, "DELETE", f"/jobs/{pulsar_id}", what="removing the job")
        self.final.pop(handle, None)

    # ---- helpers ----------------------------------------------------------------------------------------
    def _command_line(self, job: JobSpec, server: str, layout: Mapping[str, Any]) -> str:
        """One shell line for Pulsar: every piece shlex-quoted, so no option value is ever read by a shell."""
        if not job.argv:
            raise BackendError("the job has an empty command")
        try:
            working, inputs_dir = layout["working_directory"], layout["inputs_directory"]
            job_dir, metadata_dir = layout["job_directory"], layout["metadata_directory"]
        except KeyError as exc:
            raise BackendError(f"Pulsar server {server} set the job up without a {exc} in its answer") from exc
        # HOME is scratch beside TMPDIR, outside the working directory: .cache/ and .config/ stay out of the outputs.
        env = {"HOME": f"{job_dir}/tmp/home", "TMPDIR": f"{job_dir}/tmp", "LANG": "C.UTF-8",
               "MPLBACKEND": "Agg", "OMP_NUM_THREADS": str(max(1, int(job.cpus))), **job.env,
               "CAESAR_JOB_ID": job.job_id}
        bad = [name for name in env if not _ENV_NAME.match(name)]
        if bad:
            raise BackendError(f"invalid environment variable name {bad[0]!r}")
        q = shlex.quote
        steps = [f"cd {q(working)}", f"mkdir -p {q(env['HOME'])}"]
        tops = sorted({PurePosixPath(_relative(i.relpath, "input")).parts[0] for i in job.inputs})
        steps += [f"ln -s -- {q(inputs_dir + '/' + top)} {q(top)}" for top in tops]
        assignments = " ".join(f"{name}={q(value)}" for name, value in env.items())
        app_path = self.servers[server]["app_path"]
        if app_path:
            assignments = f"PATH={q(str(app_path))}:\"$PATH\" {assignments}"
        manifest, sums = q(f"{metadata_dir}/{DIRS_MANIFEST}"), q(f"{metadata_dir}/{SUMS_MANIFEST}")
        # After the app: drop the input links, list the directories (Pulsar lists files only) and the files' sha256
        # (each download is checked against it), keep the app's exit status.
        unlink = f"rm -f -- {' '.join(q(top) for top in tops)}; " if tops else ""
        run = (f"{{ {assignments} {' '.join(q(str(a)) for a in job.argv)}; rc=$?; {unlink}"
               f"find . -mindepth 1 -type d -print0 > {manifest} 2>/dev/null; "
               f"find . -type f -exec sha256sum -- {{}} + > {sums} 2>/dev/null; (exit $rc); }}")
        return " && ".join([*steps, run])

    def _status(self, server: str, pulsar_id: str) -> dict[str, Any]:
        return self._json(server, "GET", f"/jobs/{pulsar_id}/status", what="asking the job's status")

    def _json(self, server: str, method: str, path: str, params: Mapping[str, Any] | None = None,
              what: str | None = None) -> dict[str, Any]:
        response = self._call(server, method, path, params, what=what)
        try:
            body = response.json()
        except ValueError as exc:       # a proxy's HTML error page, a truncated answer
            raise BackendUnavailable(f"Pulsar server {server} answered {what or path} with something that is "
                                     f"not JSON: {response.text[:80]!r}") from exc
        if not isinstance(body, dict):
            raise BackendUnavailable(f"Pulsar server {server} answered {what or path} with {body!r:.80}")
        return body

    def _sums(self, server: str, pulsar_id: str) -> dict[str, str]:
        """The files' sha256 as the job's own command computed them on the server ({relative path: hex}). A name
        sha256sum had to escape (a backslash or a newline in it) is left out: that file is checked by size only."""
        text = self._call(server, "GET", f"/jobs/{pulsar_id}/files", {"name": SUMS_MANIFEST, "type": "output_metadata"},
                          what="reading the outputs' checksums").content.decode("utf-8", "replace")
        found: dict[str, str] = {}
        for line in text.splitlines():
            digest, sep, name = line.partition("  ")
            if sep and not digest.startswith("\\") and len(digest) == 64:
                found[name.removeprefix("./")] = digest
        return found

    def _download(self, server: str, pulsar_id: str, name: str, kind: str, target: Path,
                  sha256: str | None = None) -> None:
        """name into target, through a part file; its size is held to Content-Length (urllib3), and its sha256, when
        the server computed one, to that: a short or altered copy is BackendUnavailable (fetched again)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        response = self._call(server, "GET", f"/jobs/{pulsar_id}/files", {"name": name, "type": kind},
                              stream=True, what=f"downloading {name}")
        digest = hashlib.sha256()
        try:
            with self._transport(lambda problem: f"Pulsar server {server}: downloading {name} broke off: {problem}"), \
                    open(partial, "wb") as fh:
                for block in response.iter_content(1024 * 1024):
                    fh.write(block)
                    digest.update(block)
        except BackendUnavailable:
            partial.unlink(missing_ok=True)
            raise
        finally:
            response.close()
        if sha256 is not None and digest.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise BackendUnavailable(f"Pulsar server {server}: {name} arrived with sha256 {digest.hexdigest()}, not "
                                     f"{sha256} as the job's command computed it there")
        os.replace(partial, target)

    def _split(self, handle: str) -> tuple[str, str]:
        server, _, pulsar_id = handle.rpartition(":")
        if server not in self.servers or not pulsar_id:
            raise BackendError(f"Pulsar server {server!r} of job handle {handle!r} is not configured "
                               f"(known: {', '.join(sorted(self.servers))})")
        return server, pulsar_id

    def _session(self, server: str) -> requests.Session:
        if server not in self.sessions:
            self.sessions[server] = requests.Session()
        return self.sessions[server]

    def _transport(self, message: Callable[[str], str]) -> AbstractContextManager[None]:
        """requests' errors become BackendUnavailable(message(what went wrong)), told and chained without the URL,
        whose query string carries the private token."""
        def translate(exc: Exception) -> BackendError:
            error = BackendUnavailable(message(self._redact(_describe(exc))))
            error.__cause__ = _Scrubbed(self._redact(exc))
            return error
        return translate_errors(requests.RequestException, translate)

    def _redact(self, error: BaseException | str) -> str:
        text = error if isinstance(error, str) else f"{error.__class__.__name__}: {error}"
        for conf in self.servers.values():
            if conf["token"]:
                text = text.replace(str(conf["token"]), "***")
        return text

    def _call(self, server: str, method: str, path: str, params: Mapping[str, Any] | None = None,
              data: Any = None, stream: bool = False, what: str | None = None) -> requests.Response:
        """One REST call; connection errors and 502/503/504 retried with exponential backoff, then translated."""
        conf = self.servers[server]
        query = dict(params or {})
        if conf["token"]:
            query["private_token"] = conf["token"]
        what = what or f"{method} {path}"
        start = data.tell() if hasattr(data, "tell") else None
        for attempt in range(self.retries + 1):
            if start is not None:
                data.seek(start)        # a retried upload sends the whole file again
            try:
                with self._transport(lambda problem: problem):
                    response = self._session(server).request(method, conf["url"] + path, params=query, data=data,
                                                             stream=stream, timeout=self.timeout)
            except BackendUnavailable as exc:
                problem: str = str(exc)
                failure: BaseException | None = exc.__cause__
            else:
                if response.status_code < 400:
                    return response
                response.close()
                problem = f"HTTP {response.status_code} {response.reason}"
                if response.status_code in (401, 403):
                    raise BackendError(f"Pulsar server {server} ({conf['url']}) refused the private token "
                                       f"({problem}) while {what}; check BACKENDS.pulsar.servers.{server}")
                if response.status_code < 500:
                    raise BackendError(f"Pulsar server {server} rejected {what}: {problem}")
                failure = _Scrubbed(problem)
                if response.status_code not in _RETRY_STATUS:
                    break               # Pulsar's own 500s (missing file, bad job id) do not heal by retrying
            if attempt < self.retries:
                time.sleep(self.backoff * 2 ** attempt)
        raise BackendUnavailable(f"Pulsar server {server} ({conf['url']}) failed while {what}: {problem}") \
            from failure


def _relative(path: str, what: str) -> str:
    """A relative POSIX path inside the job directory, or BackendError."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or path != pure.as_posix():
        raise BackendError(f"{what} path {path!r} is not a plain relative path inside the job directory")
    return path


def _describe(exc: BaseException) -> str:
    """A short account of a transport error: requests' own text repeats the whole URL."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.ReadTimeout):
        return "no answer in time"
    if isinstance(exc, requests.ConnectionError):
        errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
        return f"cannot connect ({errno.group(0) if errno else exc.__class__.__name__})"
    return exc.__class__.__name__


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
