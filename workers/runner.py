"""Around every backend and every job kind, once: claim, drive the kind's steps on the backend (submit, follow,
cancel, time limits, fetch), end. How a kind plugs in: workers/kinds.py. The end's recording: workers/ending.py;
lost jobs and the reaper: workers/lost.py. The states and their transitions: caesar_rest/states.py."""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import InterfaceError, OperationalError

from caesar_rest import joblogs
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
from caesar_rest.states import ABORTED, RUNNING, STARTED, TERMINAL_STATES, TIMED_OUT, Claim, claim, transition

from . import ending, kept, lost, retry
from .kinds import Ending, KindRun, StepResult, kind_run
from .live_logs import LogRelay

log = logging.getLogger("caesar.runner")
DB_ERRORS = (OperationalError, InterfaceError)
HOST = lost.HOST


class Runner:
    """Drives one job through its kind and its backend; the kinds and backends stay small."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = settings
        self.url: str = settings["DATABASE_URL"]
        self.follower: str | None = None    # the token of the poll chain following a remote job (poll_once)
        self._relays: dict[str, LogRelay] = {}   # job id -> its running log relay (relaying)

    # ---- entry points ------------------------------------------------------------------------------------------------
    def run(self, job_id: str) -> str:
        """Task body of caesar.run_job. Returns what happened (for the task result and logs): the end state, 'poll'
        when a remote backend now runs the job, or what a redelivery found."""
        with session_scope(self.url) as s:
            held = claim(s, job_id, HOST, f"Worker {HOST} took the job; staging inputs",
                         {"worker_pid": os.getpid(), "worker_node": _node()})
        if held is None:
            return lost.on_redelivery(self, job_id)
        run = kind_run(self, held)
        try:
            backend = get_backend(self.settings, held.backend)
        except BackendError as exc:
            return self.end(held, Ending(ABORTED, f"Backend {held.backend!r} unavailable on worker {HOST}: {exc}"))
        with run, self.holding(held.id), self.relaying(held):
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
        last: StepResult | None = None
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
            result = last = self._follow(held, run, backend, handle)
            if self._fetch(backend, handle, held, result):
                self._cleanup(backend, handle, held, result)      # the outputs are in the job directory now
            stopped = run.step_ended(spec, result)
            if stopped is not None:
                return self.end(held, _classified(kept.noted(held, backend, handle, result, stopped), result))
        how = run.finish()
        if last is not None:            # a container whose outputs could not be copied out is kept, and named
            how = kept.noted(held, backend, handle, last, how)
        return self.end(held, _classified(how, last))

    def _submitted(self, held: Claim, run: KindRun, backend: Backend, handle: str) -> None:
        """The handle (and the pid of a local job) recorded; an in-slot job is RUNNING from now, in the same UPDATE
        when the job is still STARTED (its first command: the usual case)."""
        pid = int(handle) if handle.isdigit() and held.backend == "local" else None
        now = self._now()
        started: dict[str, Any] = {"handle": handle, "pid": pid, "heartbeat_at": now}
        if not backend.blocking:            # this worker's poll chain follows the job from now on (poll_once)
            self.follower = started["follower"] = uuid.uuid4().hex
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
        start = time.monotonic()
        deadline = run.deadline(start)
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
            backend.wait(handle, interval)

    def _fetch(self, backend: Backend, handle: str, held: Claim, result: StepResult) -> bool:
        """Outputs, logs included, into the job directory, tried FETCH_ATTEMPTS times with backoff (a backend that
        lost the job is asked once). True when they are all here: only then may the backend's copy go. An
        unreachable backend would only repeat its connection error here; the job's reason already says it."""
        if not result.reachable:
            return False
        attempts = 1 if result.status.state == LOST else max(1, int(self.settings["FETCH_ATTEMPTS"]))
        for attempt in range(attempts):
            try:
                backend.fetch_outputs(handle, held.workdir)
                result.fetch_error = None
                return True
            except Exception as exc:
                result.fetch_error = exc
                log.warning("job %s: fetching its outputs from %s failed (try %d of %d): %s", held.id,
                            backend.name, attempt + 1, attempts, exc)
                if attempt + 1 < attempts:
                    time.sleep(min(2.0 ** attempt, 30.0))
        return False

    def _cleanup(self, backend: Backend, handle: str, held: Claim, result: StepResult) -> None:
        try:
            backend.cleanup(handle)
        except Exception as exc:
            log.exception("cleanup of %s", held.id)
            result.cleanup_error = exc

    def _stop(self, backend: Backend, handle: str) -> None:
        try:
            backend.cancel(handle)
        except Exception:
            # Never swallow a failed stop silently: the job's status will say so.
            log.exception("cancel of %s on %s failed", handle, backend.name)
            raise

    # ---- following a remote job --------------------------------------------------------------------------------------
    def poll_once(self, job_id: str, held: Claim | None = None, follower: str | None = None) -> str:
        """One poll of a non-blocking (remote) job. Returns the state, 'poll' when it must be polled again, or
        'followed' when another live poll chain follows the job (this one stops: one follower per job).

        The chain's token (follower) takes the job in one UPDATE: when the job has no follower, is this chain's,
        or its follower's heartbeat is older than STALE_AFTER (that chain is gone). Taking it is a heartbeat."""
        token = follower or self.follower or uuid.uuid4().hex
        now = self._now()
        gone = now - timedelta(seconds=float(self.settings["STALE_AFTER"]))
        with session_scope(self.url) as s:
            took = cast(CursorResult[Any], s.execute(update(Job).where(
                Job.id == job_id, Job.state.in_((STARTED, RUNNING)),
                or_(Job.follower.is_(None), Job.follower == token, Job.heartbeat_at.is_(None),
                    Job.heartbeat_at < gone)).values(follower=token, heartbeat_at=now))).rowcount
            job = s.get(Job, job_id)
            if job is None or job.state in TERMINAL_STATES:
                return job.state if job else "missing"
            if not took:
                return "followed"
            if held is None:
                held = Claim(job)
                _ = held.inputs      # loaded while the session is open (the end's caesar_job.json lists them)
            handle, started, ran = job.handle or "", job.run_date or job.start_date, job.run_date
            cancel, unreachable_since = job.cancel_requested, job.unreachable_since
        self.follower = token
        with self.holding(job_id):
            return self._poll(held, handle, started, ran, cancel, unreachable_since)

    def _poll(self, held: Claim, handle: str, started: datetime | None, ran: datetime | None, cancel: bool,
              unreachable_since: datetime | None) -> str:
        job_id = held.id
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
            if status.state == QUEUED and status.reason:
                # Why it waits, in the backend's words (Slurm's "Resources", "Priority"), while it is still STARTED.
                s.execute(update(Job).where(Job.id == job_id, Job.state == STARTED, Job.status != status.reason)
                          .values(status=status.reason))
            if status.state != QUEUED:
                # A job that ended before any poll saw it run still gets its RUNNING step, from submission on.
                run_date = self._now() if status.state == B_RUNNING else started
                transition(s, job_id, RUNNING, "Job is running", from_states=(STARTED,), run_date=run_date)
        if status.state in (QUEUED, B_RUNNING):
            # The limit counts from when the job was first seen running: time in the backend's queue (a busy Slurm
            # partition) is not run time, and the backend's own limit, where it has one, counts the same way.
            limit = run.time_limit
            if ran and limit and (self._now() - ran).total_seconds() > limit:
                try:
                    self._stop(backend, handle)
                except BackendUnavailable as exc:
                    return self._unreachable(held, run, backend, handle, unreachable_since, exc)
                return self._remote_end(held, run, backend, handle, StepResult(status, "timeout"))
            return "poll"
        return self._remote_end(held, run, backend, handle, StepResult(status))

    def _remote_end(self, held: Claim, run: KindRun, backend: Backend, handle: str, result: StepResult) -> str:
        """Outputs fetched, the end recorded, and only then the backend's copy removed; when the fetch failed (or
        the backend stayed unreachable) the copy is kept and the job's status says where (workers/kept.py)."""
        fetched = self._fetch(backend, handle, held, result)
        stopped = run.step_ended(None, result)
        how = kept.noted(held, backend, handle, result, stopped if stopped is not None else run.finish())
        state = self.end(held, _classified(how, result))
        if fetched:
            self._cleanup(backend, handle, held, result)
            if result.cleanup_error is not None:
                kept.cleanup_failed(self, held.id, held.backend, handle, result.cleanup_error)
        return state

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
        """Record the job's end (workers/ending.py), unless the attempt ended for a reason its job retries on: then
        PENDING, the job queued again (workers/retry.py; the caller publishes it). Returns the state the job is in:
        `how.state`, PENDING, or the state another actor (a cancel, the reaper) ended it in first."""
        again = retry.again(self, held, how)
        if again is not None:
            return again
        return ending.record(self, held, how)

    @contextmanager
    def holding(self, job_id: str) -> Iterator[None]:
        """A heartbeat for the job, from a thread of its own, for as long as this worker holds it: staging, submit,
        following, fetching and finishing alike, so a slow step never looks like a dead worker to the reaper."""
        stop = threading.Event()
        every = float(self.settings["HEARTBEAT_INTERVAL"])

        def beat() -> None:
            while not stop.wait(every):
                self.heartbeat(job_id)

        thread = threading.Thread(target=beat, name=f"heartbeat {job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(every + 10)

    @contextmanager
    def relaying(self, held: Claim) -> Iterator[None]:
        """With STORAGE s3, the job's logs relayed to S3 while this worker holds it (workers/live_logs.py): an API
        on another host reads them there. ending.record stops the relay before it archives the directory."""
        if not joblogs.relays(self.settings):
            yield
            return
        self._relays[held.id] = LogRelay(self.settings, held.id, held.owner, held.workdir).start()
        try:
            yield
        finally:
            self.stop_relay(held.id)

    def stop_relay(self, job_id: str, last_copy: bool = True) -> LogRelay | None:
        """Stop the job's log relay (after its last copy, unless told not to); returns it, or None."""
        relay = self._relays.pop(job_id, None)
        if relay is not None:
            relay.stop(last_copy)
        return relay

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

    def declare_lost(self, job_id: str, why: str, attempt: int | None = None) -> str:
        return lost.declare_lost(self, job_id, why, attempt)

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


def _node() -> str | None:
    """The Celery node name of the worker running this task (what answers the reaper's ping), if in one."""
    from celery import current_task

    request = getattr(current_task, "request", None)
    return getattr(request, "hostname", None) or None


def _classified(how: Ending, result: StepResult | None) -> Ending:
    """how, with the retry reason the attempt's last command gives (a kind may have set one already)."""
    if how.retry_reason is not None:
        return how
    reason = "timed_out" if how.state == TIMED_OUT else retry.reason_of(result)   # a backend's own limit too
    return dataclasses.replace(how, retry_reason=reason) if reason else how


def reap(settings: Mapping[str, Any], publish, follow, view: Callable[[], set[str] | None] = lost.broker_view,
         ) -> dict[str, int]:
    """The reaper (workers/lost.py), under the name the Celery task imports."""
    return lost.reap(settings, publish, follow, view)
