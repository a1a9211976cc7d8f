"""The Backend protocol every execution backend implements, and the data it exchanges."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol


from caesar_rest.errors import BackendError, BackendNotConfigured, BackendUnavailable  # noqa: F401 (re-exported)


@dataclass
class InputFile:
    """An input staged into the job directory before submit."""

    relpath: str          # relative to JobSpec.workdir, e.g. "inputs/image.fits"
    uuid: str
    size_bytes: int
    sha256: str


@dataclass
class JobSpec:
    """Everything a backend needs to run one job. argv paths are relative to workdir."""

    job_id: str
    owner: str
    app: str
    argv: list[str]
    workdir: Path                       # the job directory on this host (inputs/ already staged)
    inputs: list[InputFile] = field(default_factory=list)
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cpus: float = 1.0
    memory_mb: int | None = None
    time_limit_s: int | None = None
    options: dict[str, Any] = field(default_factory=dict)   # backend-specific (server name, pull policy...)


# BackendStatus.state values
QUEUED = "QUEUED"        # accepted by the backend, not running yet
RUNNING = "RUNNING"
EXITED = "EXITED"        # the process ended; exit_code says how
FAILED = "FAILED"        # the backend failed the job without an exit code (held, rejected...); reason says why
LOST = "LOST"            # the backend no longer knows the job
CANCELLED = "CANCELLED"  # removed/cancelled on the backend side


@dataclass
class BackendStatus:
    state: str
    exit_code: int | None = None
    reason: str = ""
    pid: int | None = None
    host: str | None = None
    oom_killed: bool = False


def poll_in_slot(backend: Any, handle: str) -> BackendStatus:
    """A poll by a loop that follows its job in the worker slot: an engine that does not answer this once
    (BackendUnavailable) leaves the job running as far as the loop knows, and the next turn asks again."""
    try:
        return backend.poll(handle)
    except BackendUnavailable as exc:
        return BackendStatus(RUNNING, reason=str(exc))


class Backend(Protocol):
    """Runs argv somewhere. Persistence, state, retries and tarballs live around it (workers.runner)."""

    name: ClassVar[str]
    # True: the job runs inside the worker slot and is polled in a loop there (local, container).
    # False: submit returns at once; a self-rescheduling task polls (pulsar, condor, batch).
    blocking: ClassVar[bool]
    # Names a job may set in its request's "backend_options" (validated by the API); optionally
    # `check_job_options(backend_settings, options) -> str | None` (a message when invalid) as a staticmethod.
    job_options: ClassVar[tuple[str, ...]]
    # Optional `runs_images: ClassVar[bool]`: its jobs run their app's container image, so ALLOWED_IMAGES applies.

    def __init__(self, settings: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        """settings: the whole settings mapping; options: settings["BACKENDS"][name]."""

    def submit(self, job: JobSpec) -> str:
        """Start the job; return an opaque handle stored with the job."""

    def poll(self, handle: str) -> BackendStatus:
        """Current state of the job named by handle."""

    def cancel(self, handle: str) -> None:
        """Stop the job (kill its processes / container / remote job). Idempotent."""

    def fetch_outputs(self, handle: str, dest: Path) -> None:
        """Bring every output file, plus stdout.log and stderr.log, into dest (the job directory)."""

    def cleanup(self, handle: str) -> None:
        """Free whatever the backend holds for this job (remote dir, container). Idempotent."""
