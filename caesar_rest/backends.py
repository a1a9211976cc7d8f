"""The Backend protocol, its base class, the data a backend exchanges, and the registry of backends by name.

Core: the API imports this to validate a job's backend options and ask a backend's health, so importing it has
no side effects and imports nothing from `workers` (the registry names the implementations by import string,
resolved only when a backend is asked for, as Celery resolves its result backends)."""
from __future__ import annotations

import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, cast

from kombu.utils.imports import symbol_by_name

from .errors import BackendError, BackendNotConfigured, BackendUnavailable

__all__ = [
    "BACKEND_ALIASES", "CANCELLED", "EXITED", "FAILED", "LOST", "QUEUED", "REGISTRY", "RUNNING", "Backend",
    "BackendBase", "BackendError", "BackendNotConfigured", "BackendStatus", "BackendUnavailable", "InputFile",
    "JobSpec", "backend_class", "get_backend", "health_check", "poll_in_slot", "translate_errors",
]


@dataclass
class InputFile:
    """An input staged into the job directory before submit."""

    relpath: str          # relative to JobSpec.workdir, e.g. "inputs/image.fits"
    uuid: str
    size_bytes: int
    sha256: str


@dataclass
class JobSpec:
    """Everything a backend needs to run one job, so that no backend reads the database. argv paths are relative
    to workdir."""

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
    app_version: str | None = None      # the app's version (Batch: one job definition per app version)


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
    timed_out: bool = False     # the backend itself stopped the job at its time limit (Slurm's TIMEOUT): TIMED-OUT


class Backend(Protocol):
    """Runs argv somewhere. Persistence, state, retries and tarballs live around it (workers.runner)."""

    name: ClassVar[str]
    # True: the job runs inside the worker slot and is polled in a loop there (local, container).
    # False: submit returns at once; a self-rescheduling task polls (pulsar, condor, batch).
    blocking: ClassVar[bool]
    # Names a job may set in its request's "backend_options" (validated by the API with check_job_options).
    job_options: ClassVar[tuple[str, ...]]
    # Its jobs run their app's container image, so ALLOWED_IMAGES applies (caesar_rest.images).
    runs_images: ClassVar[bool]
    # A remote backend that runs a whole TES task of several executors as one job (options["tes"]["executors"]).
    tes_batch: ClassVar[bool]

    def __init__(self, settings: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        """settings: the whole settings mapping; options: settings["BACKENDS"][name]."""

    @staticmethod
    def check_job_options(backend_settings: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
        """A message naming what is wrong with a job's backend_options, None when they are fine (a 400 at submit:
        a staticmethod, since the API checks without building the backend)."""

    @classmethod
    def check_image(cls, settings: Mapping[str, Any], backend_settings: Mapping[str, Any], image: str) -> str | None:
        """Why a job asking for `image` cannot run on this backend so configured (a 400 at submit, checked without
        building the backend), None when it can."""

    @classmethod
    def runs_tes(cls, backend_settings: Mapping[str, Any]) -> bool:
        """Its jobs can be GA4GH TES executors (an image, the task's directories mounted at their paths)."""

    def health(self) -> Mapping[str, Any] | None:
        """A cheap check for GET /health: details, or None; raises when the backend cannot take jobs."""

    def submit(self, job: JobSpec) -> str:
        """Start the job; return an opaque handle stored with the job."""

    def poll(self, handle: str) -> BackendStatus:
        """Current state of the job named by handle."""

    def wait(self, handle: str, seconds: float) -> None:
        """Pause between two polls of a blocking job, returning early when the backend knows it ended."""

    def cancel(self, handle: str) -> None:
        """Stop the job (kill its processes / container / remote job). Idempotent."""

    def fetch_outputs(self, handle: str, dest: Path) -> None:
        """Bring every output file, plus stdout.log and stderr.log, into dest (the job directory)."""

    def cleanup(self, handle: str) -> None:
        """Free whatever the backend holds for this job (remote dir, container). Idempotent."""

    def adopt(self, job_id: str, workdir: Path, since: float) -> str | None:
        """The handle of a job this backend made for job_id since `since` (epoch seconds: when the attempt began)
        although no submit returned it to be recorded (its reply was lost, or the worker died in between), so that
        it is followed instead of submitted a second time; None when there is none. A job of an earlier attempt
        still running is stopped: its attempt has ended."""


class BackendBase(ABC):
    """What every backend derives from: the protocol's optional parts with their defaults, so that callers call
    them instead of asking whether they exist."""

    name: ClassVar[str]
    blocking: ClassVar[bool]
    job_options: ClassVar[tuple[str, ...]] = ()
    runs_images: ClassVar[bool] = False
    tes_batch: ClassVar[bool] = False

    @staticmethod
    def check_job_options(backend_settings: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
        return None         # the names in job_options are all it takes, any value

    @classmethod
    def check_image(cls, settings: Mapping[str, Any], backend_settings: Mapping[str, Any], image: str) -> str | None:
        """ALLOWED_IMAGES, for a backend that runs its jobs' images; the others run the app in place (the image is
        only recorded)."""
        from .images import refusal

        return refusal(settings, image) if cls.runs_images else None

    @classmethod
    def runs_tes(cls, backend_settings: Mapping[str, Any]) -> bool:
        return False

    def health(self) -> Mapping[str, Any] | None:
        """Checks nothing: GET /health reports a backend that keeps this default as "unchecked"."""
        return None

    def wait(self, handle: str, seconds: float) -> None:
        time.sleep(seconds)     # nothing to wait on but the clock

    def adopt(self, job_id: str, workdir: Path, since: float) -> str | None:
        return None             # a backend that cannot find its jobs by the caesar job id

    @abstractmethod
    def submit(self, job: JobSpec) -> str: ...

    @abstractmethod
    def poll(self, handle: str) -> BackendStatus: ...

    @abstractmethod
    def cancel(self, handle: str) -> None: ...

    @abstractmethod
    def fetch_outputs(self, handle: str, dest: Path) -> None: ...

    @abstractmethod
    def cleanup(self, handle: str) -> None: ...


def poll_in_slot(backend: Backend, handle: str) -> BackendStatus:
    """A poll by a loop that follows its job in the worker slot: an engine that does not answer this once
    (BackendUnavailable) leaves the job running as far as the loop knows, and the next turn asks again."""
    try:
        return backend.poll(handle)
    except BackendUnavailable as exc:
        return BackendStatus(RUNNING, reason=str(exc))


@contextmanager
def translate_errors(catch: type[Exception] | tuple[type[Exception], ...],
                     translate: Callable[[Exception], BackendError]) -> Iterator[None]:
    """A backend's library errors (catch) leave the block as the BackendError translate makes of them (Unavailable
    when retrying may help), raised from the original, or from the cause translate set (a scrubbed copy, when the
    original carries a secret). BackendErrors and other exceptions pass unchanged. One helper for every backend,
    like httpx's map_exceptions."""
    try:
        yield
    except BackendError:
        raise
    except catch as exc:
        translated = translate(exc)
        raise translated from (translated.__cause__ or exc)


# ---- the registry ---------------------------------------------------------------------------------------------
#: Backend names → import strings of their classes (Celery's BACKEND_ALIASES). BACKENDS[name]["class"] overrides.
BACKEND_ALIASES: dict[str, str] = {
    "local": "workers.backends.local:LocalBackend",
    "container": "workers.backends.container:ContainerBackend",
    "pulsar": "workers.backends.pulsar:PulsarBackend",
    "condor": "workers.backends.htcondor:HTCondorBackend",
    "batch": "workers.backends.batch:BatchBackend",
    "slurm": "workers.backends.slurm:SlurmBackend",
}
REGISTRY = BACKEND_ALIASES

#: (name, id(settings)) → (settings, instance). The settings are held so that their id is not reused by a later
#: mapping while the entry stands (a freed mapping's id, reused, would be handed the old instance).
_instances: dict[tuple[str, int], tuple[Mapping[str, Any], Backend]] = {}


def backend_class(name: str, options: Mapping[str, Any] | None = None) -> type[Backend]:
    """The class of backend `name` (its "class" option, else the registry's); BackendNotConfigured when unknown or
    not importable here (a missing extra: the message says which to install)."""
    target = (options or {}).get("class") or BACKEND_ALIASES.get(name)
    if target is None:
        raise BackendNotConfigured(f"Unknown backend {name!r}; known: {sorted(BACKEND_ALIASES)}")
    try:
        cls = symbol_by_name(target)
    except ImportError as exc:
        raise BackendNotConfigured(f"Backend {name!r} cannot be loaded ({exc}); install its extra: "
                                   f"pip install 'caesar-rest[{name}]'") from exc
    except AttributeError as exc:
        raise BackendNotConfigured(f"Backend {name!r}: {target!r} names no class ({exc})") from exc
    return cast("type[Backend]", cls)


def get_backend(settings: Mapping[str, Any], name: str) -> Backend:
    """One instance per backend name and settings object in this process (backends may hold state)."""
    key = (name, id(settings))
    cached = _instances.get(key)
    if cached is not None and cached[0] is settings:
        return cached[1]
    backends = settings.get("BACKENDS") or {}
    if name not in backends:
        raise BackendNotConfigured(f"Backend {name!r} is not enabled in BACKENDS ({sorted(backends)})")
    options = backends[name] or {}
    instance = backend_class(name, options)(settings, options)
    _instances[key] = (settings, instance)
    return instance


def health_check(settings: Mapping[str, Any], name: str) -> Callable[[], Mapping[str, Any] | None] | None:
    """The check GET /health runs for backend `name`; None when its class checks nothing (it keeps BackendBase's
    health, or has none: a class named by a "class" setting). A static or class method health() is called on the
    class, without building the backend; an instance method on the process's instance (get_backend)."""
    cls = backend_class(name, settings["BACKENDS"].get(name) or {})
    attr = inspect.getattr_static(cls, "health", None)
    if attr is None or attr is BackendBase.__dict__["health"]:
        return None
    if isinstance(attr, (staticmethod, classmethod)):
        return cast("Callable[[], Mapping[str, Any] | None]", cls.health)
    return lambda: get_backend(settings, name).health()
