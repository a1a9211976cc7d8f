"""Around every backend and every job kind, once: claim, drive the kind's steps on the backend (submit, follow,
cancel, time limits, fetch), end. How a kind plugs in: workers/kinds.py. The end's recording: workers/ending.py;
lost jobs and the reaper: workers/lost.py. The states and their transitions: caesar_rest/states.py."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import InterfaceError, OperationalError

from caesar_rest.backends import (
    CANCELLED,
    FAILED,
    LOST,
    QUEUED,
    RUNNING as B_RUNNING,
    Backend,
    BackendError,
    BackendStatus,
    BackendUnavailable,
    get_backend,
    poll_in_slot,
)
from caesar_rest.db import session_scope
from caesar_rest.models import Job, utcnow
from caesar_rest.states import ABORTED, RUNNING, STARTED, TERMINAL_STATES, Claim, claim, transition

from . import ending, lost
from .kinds import Ending, KindRun, StepResult, kind_run

log = logging.getLogger("caesar.runner")
DB_ERRORS = (OperationalError, InterfaceError)
HOST = lost.HOST


class Runner:
    """Drives one job through its kind and its backend; the kinds and backends stay small."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = settings
        self.url: str = settings["DATABASE_URL"]

    # ---- entry points ------------------------------------------------------------------------------------------------
    def run(self, job_id: str) -> str:
        """Task body of caesar.run_job. Returns what happened (for the task result and logs): the end state, 'poll'
        when a remote backend now runs the job, or what a redelivery found."""
        with session_scope(self.url) as s:
            held = claim(s, job_id, HOST, f"Worker {HOST} took the job; staging inputs", {"worker_pid": os.getpid()})
        if held is None:
            return lost.on_redelivery(self, job_id)
        run = kind_run(self, held)
        try:
            backend = get_backend(self.settings, held.backend)
        except BackendError as exc:
            return self.end(held, Ending(ABORTED, f"Backend {held.backend!r} unavailable on worker {HOST}: {exc}"))
        with run:
            try:
                return self._drive(held, run, backend)
            except Exception as exc:        # a bug or an unexpected error must still end the job, with the reason
                log.exception("job %s failed in the runner", job_id)
                return self.end(held, run.internal_error(exc))

    def _drive(self, held: Claim, run: KindRun, backend: Backend) -> str:
        stopped = run.stage()
        if stopped is not None:
            return self.end(held, stopped)
        steps = run.steps()
        while True:
            spec = None
            try:
                spec = next(steps, None)       # a kind builds each command when its turn comes
                if spec is None:
                    break
                handle = backend.submit(spec)
            except Exception as exc:
                return self.end(held, run.submit_failed(spec, exc))
            self._submitted(held, run, backend, handle)
            if not backend.blocking:
                return self.poll_once(held.id, held)        # a remote job: followed by poll tasks from now on
            result = self._follow(held, run, backend, handle)
            self._collect(backend, handle, held, result)
            stopped = run.step_ended(spec, result)
            if stopped is not None:
                return self.end(held, stopped)
        return self.end(held, run.finish())

    def _submitted(self, held: Claim, run: KindRun, backend: Backend, handle: str) -> None:
        """The handle (and the pid of a local job) recorded; an in-slot job is RUNNING from now, in the same UPDATE
        when the job is still STARTED (its first command: the usual case)."""
        pid = int(handle) if handle.isdigit() and held.backend == "local" else None
        now = self._now()
        started = {"handle": handle, "pid": pid, "heartbeat_at": now}
        with session_scope(self.url) as s:
            if backend.blocking and held.run_date is None and \
                    transition(s, held.id, RUNNING, run.running_message,
                               from_states=(STARTED,), run_date=now, **started):
                held.run_date = now             # for the end's elapsed time, without a query
            else:
                s.execute(update(Job).where(Job.id == held.id).values(**started))

    # ---- following an in-slot command --------------------------------------------------------------------------------
    def _follow(self, held: Claim, run: KindRun, backend: Backend, handle: str) -> StepResult:
        interval = float(self.settings["JOB_POLL_INTERVAL"])
        beat_every = float(self.settings["HEARTBEAT_INTERVAL"])
        start = time.monotonic()
        last_beat, deadline = start, run.deadline(start)
        first = True
        while True:
            status = poll_in_slot(backend, handle)
            if status.state not in (QUEUED, B_RUNNING):
                return StepResult(status)
            if first:
                # Just started: wait once before the first query for a cancel flag (a short job has ended by then,
                # and needs none); a cancel is seen within one interval, as on every later turn.
                first = False
                backend.wait(handle, interval)
                continue
            now = time.monotonic()
            outcome = "canceled" if run.stop_requested() else "timeout" if deadline and now > deadline else None
            if outcome:
                self._stop(backend, handle)
                return StepResult(status, outcome, after_stop=poll_in_slot(backend, handle))
            if now - last_beat >= beat_every:
                last_beat = now
                self.heartbeat(held.id)
            backend.wait(handle, interval)

    def _collect(self, backend: Backend, handle: str, held: Claim, result: StepResult) -> None:
        """Outputs, logs included, into the job directory, then the backend's copy freed. An unreachable backend
        would only repeat its connection error here; the job's reason already says it."""
        if not result.reachable:
            return
        for step, call in (("fetch_error", lambda: backend.fetch_outputs(handle, held.workdir)),
                           ("cleanup_error", lambda: backend.cleanup(handle))):
            try:
                call()
            except Exception as exc:
                log.exception("%s of %s", step.replace("_", " "), held.id)
                setattr(result, step, exc)

    def _stop(self, backend: Backend, handle: str) -> None:
        try:
            backend.cancel(handle)
        except Exception:
            # Never swallow a failed stop silently: the job's status will say so.
            log.exception("cancel of %s on %s failed", handle, backend.name)
            raise

    # ---- following a remote job --------------------------------------------------------------------------------------
    def poll_once(self, job_id: str, held: Claim | None = None) -> str:
        """One poll of a non-blocking (remote) job. Returns the state, or 'poll' when it must be polled again."""
        with session_scope(self.url) as s:
            job = s.get(Job, job_id)
            if job is None or job.state in TERMINAL_STATES:
                return job.state if job else "missing"
            if held is None:
                held = Claim(job)
                _ = held.inputs      # loaded while the session is open (the end's caesar_job.json lists them)
            handle, started = job.handle or "", job.run_date or job.start_date
            cancel, unreachable_since = job.cancel_requested, job.unreachable_since
        backend = get_backend(self.settings, held.backend)
        run = kind_run(self, held)
        try:
            if cancel:
                self._stop(backend, handle)
                return self._remote_end(held, run, backend, handle, StepResult(BackendStatus(CANCELLED), "canceled"))
            status = backend.poll(handle)
        except BackendUnavailable as exc:
            return self._unreachable(held, run, backend, handle, unreachable_since, exc)
        except Exception as exc:
            log.exception("poll of job %s on %s failed", job_id, held.backend)
            why = f"Following the job on the {held.backend} backend failed: {exc.__class__.__name__}: {exc}"
            return self._remote_end(held, run, backend, handle, StepResult(BackendStatus(FAILED, reason=why)))
        with session_scope(self.url) as s:
            s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=self._now(), unreachable_since=None))
            if status.state != QUEUED:
                # A job that ended before any poll saw it run still gets its RUNNING step, from submission on.
                run_date = self._now() if status.state == B_RUNNING else started
                transition(s, job_id, RUNNING, "Job is running", from_states=(STARTED,), run_date=run_date)
        if status.state in (QUEUED, B_RUNNING):
            limit = run.time_limit
            if started and limit and (self._now() - started).total_seconds() > limit:
                try:
                    self._stop(backend, handle)
                except BackendUnavailable as exc:
                    return self._unreachable(held, run, backend, handle, unreachable_since, exc)
                return self._remote_end(held, run, backend, handle, StepResult(status, "timeout"))
            return "poll"
        return self._remote_end(held, run, backend, handle, StepResult(status))

    def _remote_end(self, held: Claim, run: KindRun, backend: Backend, handle: str, result: StepResult) -> str:
        self._collect(backend, handle, held, result)
        stopped = run.step_ended(None, result)
        return self.end(held, stopped if stopped is not None else run.finish())

    def _unreachable(self, held: Claim, run: KindRun, backend: Backend, handle: str, since, exc: Exception) -> str:
        """A remote backend did not answer: poll again, until REMOTE_UNREACHABLE_TIMEOUT, then fail the job."""
        now = self._now()
        if since is None:
            with session_scope(self.url) as s:
                s.execute(update(Job).where(Job.id == held.id).values(unreachable_since=now, heartbeat_at=now))
            return "poll"
        down = (now - since).total_seconds()
        if down > float(self.settings["REMOTE_UNREACHABLE_TIMEOUT"]):
            return self._remote_end(held, run, backend, handle, StepResult(BackendStatus(
                LOST, reason=f"the {held.backend} backend was unreachable for {down:.0f} s ({exc})"), reachable=False))
        with session_scope(self.url) as s:
            s.execute(update(Job).where(Job.id == held.id).values(heartbeat_at=now))
        return "poll"

    # ---- what kinds and the reaper call ------------------------------------------------------------------------------
    def end(self, held: Claim | str, how: Ending) -> str:
        """Record the job's end (workers/ending.py). Returns the state the job ended in: `how.state`, or the state
        another actor (a cancel, the reaper) ended it in first."""
        return ending.record(self, held, how)

    def cancel_requested(self, job_id: str, default: bool | None = None) -> bool:
        """The cancel flag; while the database is away a running job goes on (default) instead of dying."""
        try:
            with session_scope(self.url) as s:
                return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
        except DB_ERRORS:
            if default is None:
                raise
            return default

    def heartbeat(self, job_id: str) -> None:
        """The job's worker is alive (the reaper judges staleness by it); a database outage is only logged."""
        try:
            with session_scope(self.url) as s:
                s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=self._now()))
        except DB_ERRORS as exc:
            log.warning("job %s: heartbeat not stored, database unavailable (%s)", job_id, exc.__class__.__name__)

    def declare_lost(self, job_id: str, why: str) -> str:
        return lost.declare_lost(self, job_id, why)

    def retry_db(self, job_id: str, what: str, fn: Callable[[], Any]) -> Any:
        """Run fn, waiting out a database outage (up to DB_RETRY_FOR s) so a finished job's result is not lost."""
        deadline = time.monotonic() + float(self.settings.get("DB_RETRY_FOR", 600))
        delay = 0.5
        while True:
            try:
                return fn()
            except DB_ERRORS as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("job %s: %s waits for the database (%s)", job_id, what, exc.__class__.__name__)
                time.sleep(delay)
                delay = min(delay * 2, 10)

    @staticmethod
    def _now() -> datetime:
        return utcnow()


def reap(settings: Mapping[str, Any], publish, follow) -> dict[str, int]:
    """The reaper (workers/lost.py), under the name the Celery task imports."""
    return lost.reap(settings, publish, follow)
