"""The worker side of a job kind, as the runner drives it.

A job kind (caesar_rest/kinds.py: app jobs, TES tasks; OGC API - Processes jobs next) is validated and stored by
the API, which names its worker side (JobKind.worker). On a worker, once the runner has claimed the job
(caesar_rest.states.claim), the runner asks the kind's `KindRun` for each part of the work and does the rest:

    runner                                     kind (KindRun)
    ------                                     --------------
    claim: PENDING -> STARTED
                                               stage()            inputs into the job directory
    for each command:                          steps()            the commands, as JobSpecs
      submit on the backend; -> RUNNING        submit_failed()    when the backend refuses one
      follow: poll, heartbeat, cancel,         stop_requested()   the user's cancel, as the kind learns it
              time limit                       deadline()         when its commands must stop
      fetch outputs, clean up the backend      step_ended()       what that command's end means (an Ending stops)
                                               finish()           outputs collected; the job's Ending
    end: -> SUCCESS/FAILURE/...                                   (Ending.extra: the kind's own record)

A remote (non-blocking) backend runs one command per job: its end arrives through Runner.poll_once, in a later
task, with a KindRun built again from the job row (step_ended then gets spec None). A kind never writes the job's
state and never calls into the runner's internals: it returns Endings.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kombu.utils.imports import symbol_by_name

from caesar_rest.backends import BackendStatus, JobSpec
from caesar_rest.kinds import worker_of
from caesar_rest.states import Claim, JobState

if TYPE_CHECKING:
    from .runner import Runner

@dataclass
class Ending:
    """How a job ends: its state and status line, and what to record with it."""

    state: JobState
    message: str
    exit_status: int | None = None
    pid: int | None = None
    outputs: list[dict[str, Any]] | None = None     # the output manifest (workers.job_dir.output_manifest)
    extra: dict[str, Any] = field(default_factory=dict)   # merged into job.extra, even when another end won
    retry_reason: str | None = None     # lost, node_failure, oom, timed_out: the job may run again (workers/retry.py)
    attempt: int | None = None          # the end of this attempt only: a job already at a later one is left alone


@dataclass
class StepResult:
    """One command's end, as the runner saw it."""

    status: BackendStatus                 # the last status polled before the end (or before the stop)
    outcome: str = "exited"               # exited, canceled (stop_requested) or timeout (deadline passed)
    after_stop: BackendStatus | None = None   # polled once more after a stop: the exit code of the killed command
    fetch_error: Exception | None = None   # backend.fetch_outputs failed
    cleanup_error: Exception | None = None  # backend.cleanup failed
    reachable: bool = True                # False: the backend stayed unreachable; nothing was fetched


class KindRun(Protocol):
    """One claimed job of a kind on this worker (see the module docstring for when each method is called)."""

    time_limit: float                       # seconds a remote job may take from its start (poll_once)
    running_message: str                    # the status line of its RUNNING step

    def __init__(self, runner: Runner, claim: Claim) -> None: ...

    def __enter__(self) -> KindRun:
        """Held for the whole run (a kind may watch its job meanwhile: TES transfers take long)."""

    def __exit__(self, *exc_info: object) -> None: ...

    def stage(self) -> Ending | None:
        """Inputs into the job directory; an Ending (ABORTED, CANCELED) ends the job before it runs."""

    def steps(self) -> Iterator[JobSpec]:
        """The commands to run one after another on the job's backend."""

    def submit_failed(self, spec: JobSpec | None, exc: Exception) -> Ending:
        """The backend did not start spec (None: building the next spec failed)."""

    def stop_requested(self) -> bool:
        """Whether the user asked to stop the job (the follow loop stops its command when True)."""

    def deadline(self, started: float) -> float | None:
        """time.monotonic() value past which the command started at `started` is stopped (None: none)."""

    def step_ended(self, spec: JobSpec | None, result: StepResult) -> Ending | None:
        """A command ended; an Ending stops the job, None goes on to the next step (or finish)."""

    def finish(self) -> Ending:
        """Every step ran: collect the outputs and say how the job ends."""

    def internal_error(self, exc: Exception) -> Ending:
        """The run broke on a bug or an unexpected error: the job still ends, with the reason."""


def kind_run(runner: Runner, claim: Claim) -> KindRun:
    """The KindRun of the claimed job's kind (caesar_rest.kinds.KINDS names it; kombu's symbol_by_name loads it, as
    Celery loads its backends)."""
    return symbol_by_name(worker_of(claim.kind))(runner, claim)
