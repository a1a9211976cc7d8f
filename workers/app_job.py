"""The worker side of app jobs (kind "app"): the registered app's argv, already rendered by the API
(caesar_rest/apps.py render()), runs once on the job's backend with the uploaded files staged into inputs/."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from caesar_rest import s3store, storage
from caesar_rest.backends import CANCELLED, EXITED, LOST, BackendError, InputFile, JobSpec
from caesar_rest.db import session_scope
from caesar_rest.models import File
from caesar_rest.states import ABORTED, CANCELED, FAILURE, SUCCESS, TIMED_OUT, Claim

from . import job_dir
from .kinds import Ending, StepResult

if TYPE_CHECKING:
    from .runner import Runner

log = logging.getLogger("caesar.runner")


class AppRun:
    """One app job on this worker (workers/kinds.py says when the runner calls each method)."""

    running_message = "Job is running"

    def __init__(self, runner: Runner, claim: Claim) -> None:
        self.runner = runner
        self.settings = runner.settings
        self.claim = claim
        self.result: StepResult | None = None
        self.time_limit = int(claim.job.spec.get("time_limit") or self.settings["DEFAULT_TIME_LIMIT"])

    def __enter__(self) -> AppRun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    # ---- before the command ---------------------------------------------------------------------------------------
    def stage(self) -> Ending | None:
        try:
            self.spec = self._stage()
        except Exception as exc:
            return Ending(ABORTED, f"Staging the inputs failed: {exc}")
        # Staging inputs can take long: a cancel sent meanwhile stops the job before it runs. With nothing to
        # stage the window since the claim is as short as the check's own; the follow loop sees it.
        if self.claim.inputs and self.runner.cancel_requested(self.claim.id):
            return Ending(CANCELED, "Job canceled by user before it ran")
        return None

    def _stage(self) -> JobSpec:
        job, workdir = self.claim.job, self.claim.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        inputs: list[InputFile] = []
        for item in self.claim.inputs:
            with session_scope(self.runner.url) as s:
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
                       time_limit_s=self.time_limit, app_version=job.app_version,
                       options={"image_pull": spec.get("image_pull"), **(spec.get("backend_options") or {}),
                                "tes": None, "network": bool(spec.get("network"))})

    def steps(self) -> Iterator[JobSpec]:
        yield self.spec

    def submit_failed(self, spec: JobSpec | None, exc: Exception) -> Ending:
        backend = self.claim.backend
        if isinstance(exc, BackendError):
            return Ending(ABORTED, f"The {backend} backend did not start the job: {exc}")
        log.error("submit of %s failed", self.claim.id, exc_info=exc)
        return Ending(ABORTED, f"The {backend} backend did not start the job: {exc.__class__.__name__}: {exc}")

    # ---- while it runs ----------------------------------------------------------------------------------------------
    def stop_requested(self) -> bool:
        # While the database is away a running job goes on instead of dying.
        return self.runner.cancel_requested(self.claim.id, default=False)

    def deadline(self, started: float) -> float | None:
        return started + self.time_limit if self.time_limit else None

    def step_ended(self, spec: JobSpec | None, result: StepResult) -> Ending | None:
        self.result = result
        return None

    # ---- the end -----------------------------------------------------------------------------------------------------
    def finish(self) -> Ending:
        result = self.result
        assert result is not None, "finish() before the command ended"
        status, backend, workdir = result.status, self.claim.backend, self.claim.workdir
        problems = [f"{step} failed: {exc}" for step, exc in
                    (("fetching outputs", result.fetch_error), ("cleanup", result.cleanup_error)) if exc is not None]
        outputs = job_dir.output_manifest(self.claim.id, workdir)
        rc = status.exit_code
        if result.outcome == "canceled":
            state, message = CANCELED, "Job canceled by user"
        elif result.outcome == "timeout":
            state, message = TIMED_OUT, f"Job exceeded its time limit of {float(self.time_limit):g} s and was stopped"
        elif status.timed_out:
            state, message = TIMED_OUT, status.reason or f"The {backend} backend stopped the job at its time limit"
        elif status.state == EXITED and rc == 0 and not problems:
            state, message = SUCCESS, "Process terminated with success"
        elif status.state == EXITED:
            state, message = FAILURE, job_dir.exit_message(rc, status, workdir)
        elif status.state == CANCELLED:
            state, message = CANCELED, status.reason or "Job was removed on the backend"
        elif status.state == LOST:
            state, message = FAILURE, f"The {backend} backend lost the job: {status.reason}"
        else:
            state, message = FAILURE, status.reason or f"The {backend} backend failed the job"
        if problems and state == SUCCESS:
            state = FAILURE
        if problems:
            message = f"{message}; {'; '.join(problems)}"
        return Ending(state, message, exit_status=rc, pid=status.pid, outputs=outputs)

    def internal_error(self, exc: Exception) -> Ending:
        return Ending(FAILURE, f"Internal error running the job: {exc.__class__.__name__}: {exc}")
