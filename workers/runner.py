"""Around every backend, once: claim, stage, submit, follow, cancel, time limits, finish, lost-job detection."""
from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import InterfaceError, OperationalError

from caesar_rest import s3store, storage
from caesar_rest.db import json_merge, session_scope
from caesar_rest.jobs import EVENTS, INPUTS, JOBS, transition
from caesar_rest.models import (ABORTED, CANCELED, FAILURE, PENDING, RUNNING, STARTED, SUCCESS, TERMINAL_STATES,
                                TIMED_OUT, Job, JobEvent, JobInput, utcnow)

from . import job_dir
from .backends import get_backend
from .backends.base import (CANCELLED, EXITED, FAILED, LOST, QUEUED, BackendError, BackendStatus, BackendUnavailable,
                            InputFile, JobSpec, poll_in_slot)
from .backends.base import RUNNING as B_RUNNING
from .backends.local import kill_group, process_alive

log = logging.getLogger("caesar.runner")
DB_ERRORS = (OperationalError, InterfaceError)
HOST = socket.gethostname()


class Runner:
    """Drives one job through its backend; the state machine lives here, backends stay small."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = settings
        self.url = settings["DATABASE_URL"]

    # ---- entry points ---------------------------------------------------------------------------------
    def run(self, job_id: str) -> str:
        """Task body of caesar.run_job. Returns what happened (for the task result and logs)."""
        claimed = self._claim(job_id)
        if claimed is None:
            return self._on_redelivery(job_id)
        job = claimed
        self._claimed = (job_id, Path(job.workdir), job.backend, job.inputs, job.owner)
        if job.kind == "tes":               # GA4GH TES tasks: executors from the request (workers/tes.py)
            from .tes import run_task
            return run_task(self, job)
        try:
            backend = get_backend(self.settings, job.backend)
        except BackendError as exc:
            self._end(job_id, ABORTED, f"Backend {job.backend!r} unavailable on worker {HOST}: {exc}")
            return ABORTED
        try:
            spec = self._stage(job)
        except Exception as exc:
            self._end(job_id, ABORTED, f"Staging the inputs failed: {exc}")
            return ABORTED
        # Staging inputs can take long: a cancel sent meanwhile stops the job before it runs. With nothing to
        # stage the window since the claim is as short as the check's own; the follow loop sees it.
        if job.inputs and self._cancel_requested(job_id):
            self._end(job_id, CANCELED, "Job canceled by user before it ran")
            return CANCELED
        try:
            handle = backend.submit(spec)
        except BackendError as exc:
            self._end(job_id, ABORTED, f"The {job.backend} backend did not start the job: {exc}")
            return ABORTED
        except Exception as exc:
            log.exception("submit of %s failed", job_id)
            self._end(job_id, ABORTED, f"The {job.backend} backend did not start the job: {exc.__class__.__name__}: {exc}")
            return ABORTED
        with session_scope(self.url) as s:
            pid = int(handle) if handle.isdigit() and job.backend == "local" else None
            run_date = utcnow()
            started = {"handle": handle, "pid": pid, "heartbeat_at": run_date}
            # Handle and RUNNING in one UPDATE when the job is still STARTED (the usual case); the handle alone otherwise.
            if backend.blocking and transition(s, job_id, RUNNING, "Job is running", from_states=(STARTED,),
                                               run_date=run_date, **started):
                self._run_date = (job_id, run_date)     # for the end's elapsed time, without a query
            else:
                s.execute(JOBS.update().where(JOBS.c.id == job_id).values(**started))
        if backend.blocking:
            return self._follow_blocking(job_id, backend, handle, spec.time_limit_s)
        return self.poll_once(job_id)

    def poll_once(self, job_id: str) -> str:
        """One poll of a non-blocking (remote) job. Returns the state, or 'poll' when it must be polled again."""
        with session_scope(self.url) as s:
            job = s.get(Job, job_id)
            if job is None or job.state in TERMINAL_STATES:
                return job.state if job else "missing"
            handle, backend_name, started = job.handle, job.backend, job.run_date or job.start_date
            limit = job.spec.get("time_limit") or self.settings["DEFAULT_TIME_LIMIT"]
            cancel = job.cancel_requested
            unreachable_since = job.unreachable_since
        backend = get_backend(self.settings, backend_name)
        try:
            if cancel:
                self._stop(backend, handle)
                return self._finish(job_id, backend, handle, BackendStatus(CANCELLED), canceled=True)
            status = backend.poll(handle)
        except BackendUnavailable as exc:
            return self._unreachable(job_id, backend_name, backend, handle, unreachable_since, exc)
        except Exception as exc:
            log.exception("poll of job %s on %s failed", job_id, backend_name)
            return self._finish(job_id, backend, handle, BackendStatus(
                FAILED, reason=f"Following the job on the {backend_name} backend failed: {exc.__class__.__name__}: {exc}"))
        with session_scope(self.url) as s:
            s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow(), unreachable_since=None))
            if status.state != QUEUED:
                # A job that ended before any poll saw it run still gets its RUNNING step, from submission on.
                run_date = utcnow() if status.state == B_RUNNING else started
                transition(s, job_id, RUNNING, "Job is running", from_states=(STARTED,), run_date=run_date)
        if status.state in (QUEUED, B_RUNNING):
            if started and (utcnow() - started).total_seconds() > float(limit):
                try:
                    self._stop(backend, handle)
                except BackendUnavailable as exc:
                    return self._unreachable(job_id, backend_name, backend, handle, unreachable_since, exc)
                return self._finish(job_id, backend, handle, status, timed_out=float(limit))
            return "poll"
        return self._finish(job_id, backend, handle, status)

    def _unreachable(self, job_id: str, backend_name: str, backend, handle: str, since, exc: Exception) -> str:
        """A remote backend did not answer: poll again, until REMOTE_UNREACHABLE_TIMEOUT, then fail the job."""
        now = utcnow()
        if since is None:
            with session_scope(self.url) as s:
                s.execute(update(Job).where(Job.id == job_id).values(unreachable_since=now, heartbeat_at=now))
            return "poll"
        down = (now - since).total_seconds()
        if down > float(self.settings["REMOTE_UNREACHABLE_TIMEOUT"]):
            return self._finish(job_id, backend, handle, BackendStatus(
                LOST, reason=f"the {backend_name} backend was unreachable for {down:.0f} s ({exc})"), reachable=False)
        with session_scope(self.url) as s:
            s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=now))
        return "poll"

    # ---- claim and redelivery ---------------------------------------------------------------------------
    def _claim(self, job_id: str) -> Job | None:
        """PENDING -> STARTED, atomically (one UPDATE: a redelivered or republished message finds the job
        claimed), with the worker's pid merged into extra by the database. Returns the job (detached) and its
        inputs, read in the same transaction."""
        has_inputs = select(INPUTS.c.job_id).where(INPUTS.c.job_id == JOBS.c.id).exists().label("has_inputs")
        with session_scope(self.url) as s:
            now = utcnow()
            row = transition(s, job_id, STARTED, f"Worker {HOST} took the job; staging inputs", from_states=(PENDING,),
                             returning=(*JOBS.c, has_inputs), start_date=now, host=HOST, heartbeat_at=now,
                             attempts=JOBS.c.attempts + 1, extra=json_merge(JOBS.c.extra, {"worker_pid": os.getpid()}))
            if not row:
                return None
            values = row._asdict()
            inputs = s.execute(INPUTS.select().where(INPUTS.c.job_id == job_id)).all() if values.pop("has_inputs") else []
        return Job(**values, inputs=[JobInput(**i._asdict()) for i in inputs])

    def _on_redelivery(self, job_id: str) -> str:
        """The message came again (broker redelivery after a worker died, or a republish)."""
        with session_scope(self.url) as s:
            job = s.get(Job, job_id)
            if job is None:
                return "missing"
            if job.state in TERMINAL_STATES:
                return job.state            # finished: never run twice
            worker_pid = (job.extra or {}).get("worker_pid")
            same_host_dead = job.host == HOST and worker_pid and not process_alive(int(worker_pid))
            stale = job.heartbeat_at is None or (utcnow() - job.heartbeat_at).total_seconds() > float(self.settings["STALE_AFTER"])
        if same_host_dead or stale:
            return self.declare_lost(job_id, "the worker running it died")
        return "duplicate"                  # another live worker runs it

    def declare_lost(self, job_id: str, why: str) -> str:
        with session_scope(self.url) as s:
            job = s.get(Job, job_id)
            if job is None or job.state in TERMINAL_STATES:
                return job.state if job else "missing"
            if job.backend == "local" and job.pid and job.host == HOST and process_alive(job.pid, job_id):
                kill_group(job.pid, float(self.settings["CANCEL_GRACE"]))   # an orphan of the dead worker
            backend_name, handle = job.backend, job.handle
        try:
            backend = get_backend(self.settings, backend_name)
        except BackendError:
            backend = None
        if backend is not None and handle and not backend.blocking:
            # The remote job may well be alive: only its follower was lost. Keep following it.
            return "poll"
        leftovers = ""
        if backend is not None and handle and backend.name != "local":
            # An in-slot job outside this process (a container) outlives its worker: stop and remove it.
            try:
                backend.cancel(handle)
                backend.cleanup(handle)
            except Exception as exc:
                log.exception("stopping the lost job %s on %s failed", job_id, backend_name)
                leftovers = f"; stopping it on the {backend_name} backend failed: {exc}"
        self._end(job_id, FAILURE, f"Job lost: {why} while it was {job.state} (worker {job.host}); "
                  f"it was not re-run{leftovers}")
        return FAILURE

    # ---- staging ----------------------------------------------------------------------------------------
    def _stage(self, job: Job) -> JobSpec:
        workdir = Path(job.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        inputs: list[InputFile] = []
        for item in job.inputs:
            from caesar_rest.models import File
            with session_scope(self.url) as s:
                record = s.get(File, item.file_uuid)
                if record is None:
                    raise BackendError(f"input file {item.file_uuid} ({item.option}) was deleted")
                src, crc = record.path, item.crc64nvme or record.crc64nvme
            dest = workdir / item.relpath
            if storage.within(workdir, dest) is None and not dest.parent.exists():
                raise BackendError(f"input path {item.relpath!r} leaves the job directory")
            sums = None
            if not dest.exists():
                if s3store.is_s3(src):          # S3 storage: streamed down, checksummed on the way
                    sums = s3store.store_for(self.settings).download(src, dest)
                else:
                    storage.stage(src, dest)
            if self.settings.get("VERIFY_INPUTS", True):
                problem = s3store.mismatch(f"input file {item.relpath} (uuid {item.file_uuid})", item.sha256, crc,
                                           sums or s3store.checksums_of(dest))
                if problem:
                    raise BackendError(problem)
            inputs.append(InputFile(relpath=item.relpath, uuid=item.file_uuid, size_bytes=item.size_bytes,
                                    sha256=item.sha256))
        spec = job.spec or {}
        return JobSpec(job_id=job.id, owner=job.owner, app=job.app, argv=list(job.argv), workdir=workdir,
                       inputs=inputs, image=spec.get("image"), env=dict(spec.get("env") or {}),
                       cpus=float(spec.get("cpus") or 1), memory_mb=spec.get("memory_mb"),
                       time_limit_s=int(spec.get("time_limit") or self.settings["DEFAULT_TIME_LIMIT"]),
                       app_version=job.app_version,
                       options={"image_pull": spec.get("image_pull"), **(spec.get("backend_options") or {}),
                                "tes": job.extra.get("tes") if job.kind == "tes" else None,
                                "network": bool(spec.get("network"))})

    # ---- following an in-slot job -------------------------------------------------------------------------
    def _follow_blocking(self, job_id: str, backend, handle: str, time_limit: int | None) -> str:
        interval = float(self.settings["JOB_POLL_INTERVAL"])
        beat_every = float(self.settings["HEARTBEAT_INTERVAL"])
        start = time.monotonic()
        last_beat = start
        # A backend that can wait for its job's end (local: the process) is waited on instead of slept on.
        pause = getattr(backend, "wait", None) or (lambda _handle, seconds: time.sleep(seconds))
        first = True
        while True:
            status = poll_in_slot(backend, handle)
            if status.state not in (QUEUED, B_RUNNING):
                return self._finish(job_id, backend, handle, status)
            if first:
                # Just started: wait once before the first query for a cancel flag (a short job has ended by
                # then, and needs none); a cancel is seen within one interval, as on every later turn.
                first = False
                pause(handle, interval)
                continue
            now = time.monotonic()
            if self._cancel_requested(job_id, default=False):
                self._stop(backend, handle)
                return self._finish(job_id, backend, handle, status, canceled=True)
            if time_limit and now - start > time_limit:
                self._stop(backend, handle)
                return self._finish(job_id, backend, handle, status, timed_out=float(time_limit))
            if now - last_beat >= beat_every:
                last_beat = now
                try:
                    with session_scope(self.url) as s:
                        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow()))
                except DB_ERRORS as exc:
                    log.warning("job %s: heartbeat not stored, database unavailable (%s)", job_id, exc.__class__.__name__)
            pause(handle, interval)

    def _cancel_requested(self, job_id: str, default: bool | None = None) -> bool:
        """The cancel flag; while the database is away a running job goes on (default) instead of dying."""
        try:
            with session_scope(self.url) as s:
                return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
        except DB_ERRORS:
            if default is None:
                raise
            return default

    def _stop(self, backend, handle: str) -> None:
        try:
            backend.cancel(handle)
        except Exception:
            # Never swallow a failed stop silently: the job's status will say so.
            log.exception("cancel of %s on %s failed", handle, backend.name)
            raise

    # ---- the end --------------------------------------------------------------------------------------------
    def _finish(self, job_id: str, backend, handle: str, status: BackendStatus, canceled: bool = False,
                timed_out: float | None = None, reachable: bool = True) -> str:
        def read_job() -> tuple[Path, str]:
            with session_scope(self.url) as s:
                workdir, name = s.execute(select(Job.workdir, Job.backend).where(Job.id == job_id)).one()
                return Path(workdir), name

        claimed = getattr(self, "_claimed", None)      # what run() read at the claim: no query for it
        workdir, backend_name = claimed[1:3] if claimed and claimed[0] == job_id else \
            self._retry_db(job_id, "finishing", read_job)
        problems = []
        # An unreachable backend would only repeat its connection error here; the reason already says it.
        steps = (("fetching outputs", lambda: backend.fetch_outputs(handle, workdir)),
                 ("cleanup", lambda: backend.cleanup(handle))) if reachable else ()
        for step, call in steps:
            try:
                call()
            except Exception as exc:
                log.exception("%s of %s failed", step, job_id)
                problems.append(f"{step} failed: {exc}")
        outputs = job_dir.output_manifest(job_id, workdir)
        rc = status.exit_code
        if canceled:
            state, message = CANCELED, "Job canceled by user"
        elif timed_out is not None:
            state, message = TIMED_OUT, f"Job exceeded its time limit of {timed_out:g} s and was stopped"
        elif status.state == EXITED and rc == 0 and not problems:
            state, message = SUCCESS, "Process terminated with success"
        elif status.state == EXITED:
            state, message = FAILURE, job_dir.exit_message(rc, status, workdir)
        elif status.state == CANCELLED:
            state, message = CANCELED, status.reason or "Job was removed on the backend"
        elif status.state == LOST:
            state, message = FAILURE, f"The {backend_name} backend lost the job: {status.reason}"
        else:
            state, message = FAILURE, status.reason or f"The {backend_name} backend failed the job"
        if problems and state == SUCCESS:
            state = FAILURE
        if problems:
            message = f"{message}; {'; '.join(problems)}"
        self._end(job_id, state, message, exit_status=rc, pid=status.pid, outputs=outputs)
        return state

    def _retry_db(self, job_id: str, what: str, fn):
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

    def _end(self, job_id: str, state: str, message: str, outputs: list[dict[str, Any]] | None = None,
             **fields: Any) -> None:
        """Record the job's end. Whatever a download reads is in place first: tmp/ is gone and, with S3 storage,
        the job directory is in the bucket, named in the same UPDATE that ends the job (a download never sees the
        end before the outputs it serves). The local copy goes, and caesar_job.json is written, after."""
        where = self._workdir_and_owner(job_id)
        stored = None
        if where is not None:
            workdir, owner = where
            shutil.rmtree(workdir / "tmp", ignore_errors=True)
            if self.settings.get("STORAGE") == "s3" and self.settings.get("S3_JOB_OUTPUTS", True):
                stored = job_dir.archive(self.settings, job_id, owner, workdir, outputs)
        self._retry_db(job_id, f"recording {state}",
                       lambda: self._end_once(job_id, state, message, outputs=outputs, stored=stored, **fields))

    def _workdir_and_owner(self, job_id: str) -> tuple[Path, str] | None:
        """The job directory and its owner when the directory exists here; None otherwise."""
        claimed = getattr(self, "_claimed", None)
        if claimed and claimed[0] == job_id:
            workdir, owner = claimed[1], claimed[4]      # the worker that ran the job needs no query
        else:
            def read() -> tuple[str, str]:
                with session_scope(self.url) as s:
                    return s.execute(select(Job.workdir, Job.owner).where(Job.id == job_id)).one()
            found, owner = self._retry_db(job_id, "reading the job directory", read)
            workdir = Path(found)
        return (workdir, owner) if workdir.is_dir() else None

    def _end_once(self, job_id: str, state: str, message: str, outputs: list[dict[str, Any]] | None = None,
                  stored: dict[str, str] | None = None, **fields: Any) -> None:
        # The output manifest is kept whether or not this end wins the transition (a cancel may have ended the
        # job first): merged into extra by the database, in the UPDATE that ends the job or on its own.
        kept = {"outputs": outputs} if outputs is not None else {}
        merge = {"extra": json_merge(JOBS.c.extra, {**kept, **(stored or {})})} if kept or stored else {}
        known = getattr(self, "_run_date", None)    # run() set RUNNING itself: no query for the run date
        with session_scope(self.url) as s:
            now = utcnow()
            run_date = known[1] if known and known[0] == job_id else \
                s.scalar(select(JOBS.c.run_date).where(JOBS.c.id == job_id))
            if run_date is not None:
                fields.setdefault("elapsed", round((now - run_date).total_seconds(), 3))
            fields = {k: v for k, v in fields.items() if v is not None or k == "exit_status"}
            row = transition(s, job_id, state, message, returning=tuple(JOBS.c), end_date=now, **merge, **fields)
            if not row:
                # Ended already (a cancel won): downloads read the local directory, which stays; the copy goes.
                if kept:
                    s.execute(JOBS.update().where(JOBS.c.id == job_id).values(extra=json_merge(JOBS.c.extra, kept)))
                s.commit()
                if stored and stored.get("output_store"):
                    job_dir.drop_archive(self.settings, job_id, stored["output_store"])
                return
            s.commit()              # the end is recorded now; caesar_job.json is built after, in this session
            claimed = getattr(self, "_claimed", None)
            inputs = claimed[3] if claimed and claimed[0] == job_id else \
                [JobInput(**r._asdict()) for r in s.execute(INPUTS.select().where(INPUTS.c.job_id == job_id))]
            events = [JobEvent(**r._asdict()) for r in
                      s.execute(EVENTS.select().where(EVENTS.c.job_id == job_id).order_by(EVENTS.c.id))]
        job = Job(**row._asdict(), inputs=inputs, events=events)
        job_dir.write_metadata(self.settings, job, (stored or {}).get("output_store"))

def reap(settings: Mapping[str, Any], publish, follow) -> dict[str, int]:
    """Nothing lost: stale running jobs are declared lost (or re-followed), old PENDING ones re-published."""
    url = settings["DATABASE_URL"]
    now = utcnow()
    stale_cut = now - timedelta(seconds=float(settings["STALE_AFTER"]))
    pending_cut = now - timedelta(seconds=float(settings["PENDING_REPUBLISH_AFTER"]))
    with session_scope(url) as s:
        stale = s.execute(select(Job.id, Job.host, Job.extra).where(Job.state.in_((STARTED, RUNNING)),
                                                                    Job.heartbeat_at < stale_cut)).all()
        pending = s.execute(select(Job.id, Job.backend).where(Job.state == PENDING, Job.submit_date < pending_cut)).all()
        local_dead = s.execute(select(Job.id, Job.extra).where(Job.state.in_((STARTED, RUNNING)), Job.host == HOST)).all()
    runner = Runner(settings)
    lost = 0
    dead = {jid for jid, extra in local_dead
            if (extra or {}).get("worker_pid") and not process_alive(int(extra["worker_pid"]))}
    for job_id in {jid for jid, _h, _e in stale} | dead:
        why = "the worker running it died" if job_id in dead else "no heartbeat from its worker"
        if runner.declare_lost(job_id, why) == "poll":
            follow(job_id)
        else:
            lost += 1
    for job_id, backend in pending:
        publish(job_id, backend)
    stale_parts = storage.remove_stale_uploads(settings["DATA_DIR"], float(settings["STALE_UPLOAD_AFTER"]))
    return {"lost": lost, "republished": len(pending), "stale_uploads_removed": stale_parts}
