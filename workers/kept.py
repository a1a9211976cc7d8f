"""Outputs kept until safe: a backend's copy of a job (a Pulsar job directory, an HTCondor spool, a Batch prefix, a
container) is removed only after every output was fetched into the job directory and, for a remote job, its end
recorded (workers/runner.py). When fetching failed, or the backend stayed unreachable, the copy stays where it is:
the job ends with a status naming it, and `extra.kept_remote` says which backend and handle hold it, so that
`caesar-rest job refetch <id>` can fetch it again later and only then remove it."""
from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caesar_rest.backends import Backend, get_backend
from caesar_rest.db import json_merge, session_scope
from caesar_rest.errors import Conflict, NotFound
from caesar_rest.models import JOBS, Job, utcnow
from caesar_rest.states import TERMINAL_STATES, Claim

from . import job_dir
from .kinds import Ending, StepResult

if TYPE_CHECKING:
    from .runner import Runner

log = logging.getLogger("caesar.runner")


def noted(held: Claim, backend: Backend, handle: str, result: StepResult, how: Ending) -> Ending:
    """how, with the kept copy named in its status and recorded in extra, when the outputs are not all here."""
    if not handle or (result.reachable and result.fetch_error is None):
        return how
    why = "the backend stayed unreachable" if not result.reachable else f"fetching failed: {result.fetch_error}"
    # The job's backend by the name the registry knows it by (refetch looks it up again), not the class's own.
    record = {"backend": held.backend, "handle": handle, "why": why, "at": utcnow().isoformat()}
    message = (f"{how.message}; the {held.backend} backend's copy of the job is kept ({handle}): "
               f"`caesar-rest job refetch {held.id}` fetches its outputs again")
    return dataclasses.replace(how, message=message, extra={**how.extra, "kept_remote": record})


def cleanup_failed(runner: Runner, job_id: str, backend: str, handle: str, exc: Exception) -> None:
    """The end is recorded and the outputs are safe; a copy the backend could not remove is only noted."""
    note = {"backend": backend, "handle": handle, "error": f"{exc.__class__.__name__}: {exc}"}
    try:
        with session_scope(runner.url) as s:
            s.execute(JOBS.update().where(JOBS.c.id == job_id)
                      .values(extra=json_merge(JOBS.c.extra, {"cleanup_error": note})))
    except Exception:
        log.exception("job %s: the failed cleanup was not recorded", job_id)


def refetch(settings: Mapping[str, Any], job_id: str, attempts: int | None = None) -> dict[str, Any]:
    """Fetch a finished job's outputs from the copy its backend kept, into the job directory (and S3 when the job
    directories live there), record the new output manifest, then remove the backend's copy. The job's state
    stays what it was; extra.refetched says when this ran. NotFound / Conflict when there is nothing to fetch."""
    with session_scope(settings["DATABASE_URL"]) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"No job {job_id}")
        if job.state not in TERMINAL_STATES:
            raise Conflict(f"Job {job_id} is {job.state}: its worker still holds it")
        kept = dict((job.extra or {}).get("kept_remote") or {})
        workdir, owner, archived = Path(job.workdir), job.owner, (job.extra or {}).get("output_store")
    if not kept.get("handle"):
        raise Conflict(f"Job {job_id} has no copy kept on a backend: its outputs were fetched when it ended")
    if kept.get("refetched"):
        raise Conflict(f"Job {job_id}'s outputs were fetched again at {kept['refetched']}, and the backend's copy "
                       "removed")
    backend = get_backend(settings, kept["backend"])
    tries = max(1, int(attempts or settings["FETCH_ATTEMPTS"]))
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(tries):
        try:
            backend.fetch_outputs(kept["handle"], workdir)
            break
        except Exception as exc:
            if attempt + 1 == tries:
                raise Conflict(f"Fetching job {job_id}'s outputs from {kept['backend']} ({kept['handle']}) failed "
                               f"{tries} times, last: {exc}; the copy is still kept") from exc
            time.sleep(min(2.0 ** attempt, 30.0))
    outputs = job_dir.output_manifest(job_id, workdir) or []
    found: dict[str, Any] = {"outputs": outputs, "kept_remote": {**kept, "refetched": utcnow().isoformat()},
                             "refetched": utcnow().isoformat()}
    if settings.get("STORAGE") == "s3" and settings.get("S3_JOB_OUTPUTS", True):
        # The job's S3 copy is written again over the first one (same prefix): it gains the outputs, and nothing
        # the first one held is removed before the new one is in.
        if archived:
            log.info("job %s: its S3 copy %s gets the refetched outputs", job_id, archived)
        stored = job_dir.archive(settings, job_id, owner, workdir, outputs)
        if "output_store" not in stored:
            raise Conflict(f"Job {job_id}'s outputs were fetched to {workdir} but not stored in S3: "
                           f"{stored.get('output_store_error')}; the backend's copy is still kept")
        found.update(stored)
    with session_scope(settings["DATABASE_URL"]) as s:
        s.execute(JOBS.update().where(JOBS.c.id == job_id).values(extra=json_merge(JOBS.c.extra, found)))
    if "output_store" in found:
        shutil.rmtree(workdir, ignore_errors=True)
    try:
        backend.cleanup(kept["handle"])
    except Exception as exc:
        log.warning("job %s: the %s backend's copy (%s) was not removed: %s", job_id, kept["backend"],
                    kept["handle"], exc)
        found["cleanup_error"] = str(exc)
    return {"job_id": job_id, "outputs": len(outputs), "backend": kept["backend"], "handle": kept["handle"],
            **({"cleanup_error": found["cleanup_error"]} if "cleanup_error" in found else {})}
