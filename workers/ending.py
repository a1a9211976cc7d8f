"""Recording a job's end, for every kind: whatever a download reads is in place first (tmp/ is gone and, with S3
storage, the job directory is in the bucket, named in the same UPDATE that ends the job: a download never sees the
end before the outputs it serves). The local copy goes, and caesar_job.json is written, after."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from caesar_rest.db import json_merge, session_scope
from caesar_rest.models import EVENTS, INPUTS, JOBS, Job, JobEvent, JobInput, utcnow
from caesar_rest.states import Claim, transition_returning

from . import job_dir
from .kinds import Ending

if TYPE_CHECKING:
    from .runner import Runner

def record(runner: Runner, held: Claim | str, how: Ending) -> str:
    """Record how the job ended; returns its final state (how.state, or the one another actor recorded first)."""
    claim = held if isinstance(held, Claim) else None
    job_id = claim.id if claim else str(held)
    where = _workdir_and_owner(runner, job_id, claim)
    relay = runner.stop_relay(job_id, last_copy=False)      # stopped before the directory is archived
    stored = None
    if where is not None:
        workdir, owner = where
        shutil.rmtree(workdir / "tmp", ignore_errors=True)
        if runner.settings.get("STORAGE") == "s3" and runner.settings.get("S3_JOB_OUTPUTS", True):
            stored = job_dir.archive(runner.settings, job_id, owner, workdir, how.outputs)
    final = runner.retry_db(job_id, f"recording {how.state}", lambda: _end_once(runner, job_id, claim, how, stored))
    if relay is not None:
        if stored and stored.get("output_store") and final == how.state:
            relay.remove()          # the end names the archive, which logs are read from now
        else:
            relay.push()            # no archive named (off, failed, or another end won): the copy gets the last lines
    return final


def _workdir_and_owner(runner: Runner, job_id: str, claim: Claim | None) -> tuple[Path, str] | None:
    """The job directory and its owner when the directory exists here; None otherwise."""
    if claim is not None:
        workdir, owner = claim.workdir, claim.owner      # the worker that ran the job needs no query
    else:
        def read() -> tuple[str, str]:
            with session_scope(runner.url) as s:
                found = s.execute(select(Job.workdir, Job.owner).where(Job.id == job_id)).one()
                return found[0], found[1]
        found, owner = runner.retry_db(job_id, "reading the job directory", read)
        workdir = Path(found)
    return (workdir, owner) if workdir.is_dir() else None


def _end_once(runner: Runner, job_id: str, claim: Claim | None, how: Ending, stored: dict[str, str] | None) -> str:
    # The output manifest and the kind's own record are kept whether or not this end wins the transition (a cancel
    # may have ended the job first): merged into extra by the database, in the UPDATE that ends the job or alone.
    kept: dict[str, Any] = {**({"outputs": how.outputs} if how.outputs is not None else {}), **how.extra}
    merge: dict[str, Any] = {"extra": json_merge(JOBS.c.extra, {**kept, **(stored or {})})} if kept or stored else {}
    fields: dict[str, Any] = {"exit_status": how.exit_status}
    if how.pid is not None:
        fields["pid"] = how.pid
    with session_scope(runner.url) as s:
        now = utcnow()
        run_date = claim.run_date if claim is not None and claim.run_date is not None else \
            s.scalar(select(JOBS.c.run_date).where(JOBS.c.id == job_id))
        if run_date is not None:
            fields["elapsed"] = round((now - run_date).total_seconds(), 3)
        row = transition_returning(s, job_id, how.state, tuple(JOBS.c), how.message, at_attempt=how.attempt,
                                   end_date=now, **merge, **fields)
        if row is None:
            # Ended already (a cancel won): downloads read the local directory, which stays; the copy goes.
            if kept:
                s.execute(JOBS.update().where(JOBS.c.id == job_id).values(extra=json_merge(JOBS.c.extra, kept)))
            final = s.scalar(select(JOBS.c.state).where(JOBS.c.id == job_id))
            s.commit()
            if stored and stored.get("output_store"):
                job_dir.drop_archive(runner.settings, job_id, stored["output_store"])
            return final or "missing"
        # What caesar_job.json needs is read in the ending's own transaction (its event included): read after the
        # commit, it took a transaction of its own, two round trips more for every job.
        inputs = claim.inputs if claim is not None else \
            [JobInput(**r._asdict()) for r in s.execute(INPUTS.select().where(INPUTS.c.job_id == job_id))]
        events = [JobEvent(**r._asdict()) for r in
                  s.execute(EVENTS.select().where(EVENTS.c.job_id == job_id).order_by(EVENTS.c.id))]
        s.commit()              # the end is recorded now; caesar_job.json is written after
    job = Job(**row._asdict(), inputs=inputs, events=events)
    job_dir.write_metadata(runner.settings, job, (stored or {}).get("output_store"))
    return how.state
