"""Stand-in backends for the fast layer: the Backend protocol (workers/backends/base.py) implemented in-process and
deterministically, so the runner's part (claim, submit, follow, cancel, time limits, fetch, end) runs for real with
no process, container or server behind it. Nothing runs on the host.

Enabled through BACKENDS' "class" option (tests/unit/conftest.py STANDIN_BACKENDS). What each job did is kept by
handle at class level, so a test reads it whichever instance the runner's registry made (`jobs_of(job_id)`)."""
from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from caesar_rest.backends import (
    EXITED,
    FAILED,
    QUEUED,
    RUNNING,
    BackendBase,
    BackendError,
    BackendStatus,
    BackendUnavailable,
    JobSpec,
)


@dataclass
class Ran:
    """One submitted job, as the stand-in saw it."""

    spec: JobSpec
    backend: str
    calls: list[str] = field(default_factory=list)          # protocol methods called, in order
    polls: int = 0                                           # polls answered
    unreachable: int = 0                                     # polls refused with BackendUnavailable
    stopped: threading.Event = field(default_factory=threading.Event)
    fetch_failures: int = 0                                  # fetch_outputs calls refused so far
    state_at_cleanup: str | None = None                      # the job's state in the database when cleanup ran


SUBMITTED: dict[str, Ran] = {}          # by handle; handles are unique, so tests never see each other's jobs


def jobs_of(job_id: str) -> list[Ran]:
    """What the stand-ins were asked to run for job_id, in submission order."""
    return [ran for ran in SUBMITTED.values() if ran.spec.job_id == job_id]


class _StandIn(BackendBase):
    """Submit records the job; poll answers from `status()`; fetch writes the job's logs and output. A BackendBase:
    the runner relies on the whole Backend protocol (wait() included), as for every real backend."""

    name: ClassVar[str] = "standin"
    blocking: ClassVar[bool] = True
    job_options: ClassVar[tuple[str, ...]] = ()
    stdout: ClassVar[str] = "probe: done\n"
    stderr: ClassVar[str] = ""

    def __init__(self, settings: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.options = dict(options)
        self.database_url = settings.get("DATABASE_URL")

    def submit(self, job: JobSpec) -> str:
        handle = f"{self.name}-{uuid.uuid4().hex[:12]}"
        SUBMITTED[handle] = Ran(spec=job, backend=self.name, calls=["submit"])
        return handle

    def poll(self, handle: str) -> BackendStatus:
        ran = self._ran(handle, "poll")
        ran.polls += 1
        return self.status(ran)

    def status(self, ran: Ran) -> BackendStatus:
        return BackendStatus(EXITED, exit_code=0)

    def cancel(self, handle: str) -> None:
        self._ran(handle, "cancel").stopped.set()

    def fetch_outputs(self, handle: str, dest: Path) -> None:
        ran = self._ran(handle, "fetch_outputs")
        (dest / "stdout.log").write_text(self.stdout)
        (dest / "stderr.log").write_text(self.stderr)
        (dest / "result.txt").write_text(" ".join(ran.spec.argv) + "\n")

    def cleanup(self, handle: str) -> None:
        self._ran(handle, "cleanup")

    def _ran(self, handle: str, call: str) -> Ran:
        ran = SUBMITTED.get(handle)
        if ran is None:
            raise BackendError(f"stand-in {self.name} knows no job {handle!r}")
        ran.calls.append(call)
        return ran


class ExitZero(_StandIn):
    """Exits 0 at once and leaves result.txt (the job's argv) beside its logs."""

    name = "exit0"


class ExitThree(_StandIn):
    """Exits 3 with a last line on stderr, as a failing app does."""

    name = "exit3"
    stderr = "probe: reading input\nprobe: bad input\n"

    def status(self, ran: Ran) -> BackendStatus:
        return BackendStatus(EXITED, exit_code=3)


class StaysRunning(_StandIn):
    """Runs until cancel(), then reports the SIGTERM death a killed process has. Its wait() lets the runner's follow
    loop wake at once on cancel instead of sleeping out its interval."""

    name = "hang"

    def status(self, ran: Ran) -> BackendStatus:
        return BackendStatus(EXITED, exit_code=-15) if ran.stopped.is_set() else BackendStatus(RUNNING)

    def wait(self, handle: str, seconds: float) -> None:
        ran = SUBMITTED.get(handle)
        if ran is not None:
            ran.stopped.wait(seconds)


class RefusesSubmit(_StandIn):
    """Refuses every job, as a backend with no room or a bad description does."""

    name = "refuse"

    def submit(self, job: JobSpec) -> str:
        raise BackendError("no free slots on the stand-in")


class _Unreachable:
    """A poll that fails (BackendUnavailable) the first `failures` times (a BACKENDS option), then answers."""

    name: ClassVar[str]
    options: dict[str, Any]

    def poll(self, handle: str) -> BackendStatus:
        ran = self._ran(handle, "poll")                        # type: ignore[attr-defined]
        if ran.unreachable < int(self.options.get("failures", 1)):
            ran.unreachable += 1
            raise BackendUnavailable(f"stand-in {self.name} unreachable (refusal {ran.unreachable})")
        ran.polls += 1
        return self.status(ran)                                # type: ignore[attr-defined]


class FlakyPoll(_Unreachable, _StandIn):
    """In-slot, unreachable for its first polls, then exits 0."""

    name = "flaky"


SCRIPTS = {"queued-running-exit": (QUEUED, RUNNING, EXITED), "forever": (QUEUED, RUNNING)}


class Remote(_StandIn):
    """A non-blocking (remote) backend: each poll moves one step along its script (a job's backend_options may name
    one of SCRIPTS; default queued, running, exited 0), staying on the last step."""

    name = "remote"
    blocking = False
    job_options = ("script",)

    @staticmethod
    def check_job_options(backend_settings: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
        script = options.get("script")
        return None if script is None or script in SCRIPTS else f"'script' must be one of {sorted(SCRIPTS)}"

    def status(self, ran: Ran) -> BackendStatus:
        steps = SCRIPTS[ran.spec.options.get("script") or "queued-running-exit"]
        state = steps[min(ran.polls, len(steps)) - 1]
        reason = "Waiting in the stand-in queue: Resources" if state == QUEUED else ""
        return BackendStatus(state, exit_code=0 if state == EXITED else None, host="remote.example", reason=reason)


class _FetchFails:
    """fetch_outputs refuses its first `fetch_failures` calls (a BACKENDS option), as a broken download or a full
    disk does, then works; cleanup notes the job's state in the database at that moment."""

    options: dict[str, Any]
    database_url: str | None

    def fetch_outputs(self, handle: str, dest: Path) -> None:
        ran = SUBMITTED[handle]
        if ran.fetch_failures < int(self.options.get("fetch_failures", 1)):
            ran.fetch_failures += 1
            ran.calls.append("fetch_outputs")
            raise BackendError(f"download cut after 1 MiB (refusal {ran.fetch_failures})")
        super().fetch_outputs(handle, dest)                     # type: ignore[misc]

    def cleanup(self, handle: str) -> None:
        from caesar_rest.db import session_scope
        from caesar_rest.models import Job

        ran = SUBMITTED[handle]
        with session_scope(self.database_url) as s:
            ran.state_at_cleanup = s.get(Job, ran.spec.job_id).state
        super().cleanup(handle)                                 # type: ignore[misc]


class FetchFails(_FetchFails, _StandIn):
    """In-slot, exits 0, its outputs fetched only after some refusals."""

    name = "fetchfail"


class RemoteFetchFails(_FetchFails, Remote):
    """Remote, along its script, its outputs fetched only after some refusals."""

    name = "remote_fetchfail"


class OomOnce(_StandIn):
    """Killed for memory (exit 137, oom_killed) on a job's first attempt, exits 0 on the next ones."""

    name = "oomonce"

    def status(self, ran: Ran) -> BackendStatus:
        first = jobs_of(ran.spec.job_id)[0] is ran
        return BackendStatus(EXITED, exit_code=137, oom_killed=True) if first else BackendStatus(EXITED, exit_code=0)


class StopsAtItsLimit(_StandIn):
    """The backend's own time limit ends the job (as Slurm's TIMEOUT does), before the runner's deadline."""

    name = "ownlimit"

    def status(self, ran: Ran) -> BackendStatus:
        return BackendStatus(FAILED, reason="the cluster stopped it at its time limit (TIMEOUT)", timed_out=True)


class SlowSubmit(_StandIn):
    """Takes `seconds` (a BACKENDS option) to accept a job, as a slow upload of its inputs to a remote peer does."""

    name = "slow"

    def submit(self, job: JobSpec) -> str:
        import time

        time.sleep(float(self.options.get("seconds", 1)))
        return super().submit(job)


class RemoteFlaky(_Unreachable, Remote):
    """Remote, unreachable for its first polls, then along its script."""

    name = "remote_flaky"
