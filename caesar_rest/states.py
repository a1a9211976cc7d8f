"""The job state machine, in one place: the states, the transitions allowed between them (each with the reason it
exists), `transition()` (the only writer of a job's state), `insert_job()` (the one builder of job rows, for every
kind) and `claim()` (the worker's PENDING -> STARTED, returning a `Claim`).

Every kind of job (app jobs, TES tasks, and later OGC API - Processes jobs) lives in the same table and moves
through the same states; a kind only chooses the messages and the fields it records along the way.
"""
from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ClauseElement

from .errors import CaesarError


class JobState(StrEnum):
    """A job's state as stored (the original caesar-rest names, plus PENDING and CANCELED). A str: compares equal
    to, and is stored as, its value."""

    PENDING = "PENDING"          # accepted, queued, no worker has it
    STARTED = "STARTED"          # a worker claimed it and stages its inputs / submits it
    RUNNING = "RUNNING"          # its command runs on a backend
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    TIMED_OUT = "TIMED-OUT"
    CANCELED = "CANCELED"
    ABORTED = "ABORTED"          # never ran: a backend or its inputs were not there


PENDING, STARTED, RUNNING = JobState.PENDING, JobState.STARTED, JobState.RUNNING
SUCCESS, FAILURE, TIMED_OUT = JobState.SUCCESS, JobState.FAILURE, JobState.TIMED_OUT
CANCELED, ABORTED = JobState.CANCELED, JobState.ABORTED
ACTIVE_STATES: tuple[JobState, ...] = (PENDING, STARTED, RUNNING)
TERMINAL_STATES: tuple[JobState, ...] = (SUCCESS, FAILURE, TIMED_OUT, CANCELED, ABORTED)
ALL_STATES: tuple[JobState, ...] = ACTIVE_STATES + TERMINAL_STATES

# models imports the states above for its columns' defaults: imported after them, either module may load first.
from . import models  # noqa: E402

#: Every allowed transition, with why it exists. Anything else is refused by transition(); a terminal state has no
#: way out (a retry goes back to PENDING from the attempt's active state, before any end is recorded).
TRANSITIONS: dict[tuple[JobState, JobState], str] = {
    (PENDING, STARTED): "a worker claimed the job (atomically: a redelivered message finds it claimed)",
    (PENDING, CANCELED): "the user canceled the job before any worker took it",
    (STARTED, RUNNING): "the backend accepted the command and it runs (or, remote, was first seen running)",
    (STARTED, CANCELED): "a cancel arrived while the inputs were staged or the remote job was queued",
    (STARTED, ABORTED): "the job never ran: its backend is unavailable, an input could not be staged, or the "
                        "backend refused the submission",
    (STARTED, FAILURE): "the job was lost before it ran (its worker died), its remote backend failed it or became "
                        "unreachable while queued, or the worker failed preparing a TES task",
    (STARTED, TIMED_OUT): "a job ended at its time limit before any poll saw it running (a backend's own limit, "
                          "between two polls)",
    (RUNNING, SUCCESS): "the command exited 0 and its outputs were collected",
    (RUNNING, FAILURE): "the command exited non-zero, its outputs could not be collected, or the job was lost",
    (RUNNING, CANCELED): "the user canceled the running job, or its backend removed it",
    (RUNNING, TIMED_OUT): "the command ran past its time limit and was stopped",
    (STARTED, PENDING): "a retry: the attempt was lost, or its node failed, before the command ran, and its app "
                        "retries on that reason; the job is queued again for a fresh attempt (workers/retry.py)",
    (RUNNING, PENDING): "a retry: the attempt was lost, its node failed, it ran out of memory or past its time "
                        "limit, and its app retries on that reason; queued again for a fresh attempt",
}


class IllegalTransition(CaesarError):
    """A caller asked for a transition the table does not allow: a bug in that caller, never a user's error."""


def sources(state: JobState | str) -> tuple[JobState, ...]:
    """The states a job may enter `state` from, in ALL_STATES order."""
    return tuple(s for s in ALL_STATES if (s, state) in TRANSITIONS)


def check(from_states: tuple[JobState | str, ...], state: JobState | str) -> None:
    """Refuses (IllegalTransition) when any of from_states -> state is not in the table."""
    bad = [str(s) for s in from_states if (s, state) not in TRANSITIONS]
    if bad:
        raise IllegalTransition(f"no transition {', '.join(bad)} -> {state} in caesar_rest.states.TRANSITIONS")


_EVENT_PARAMS = ("state", "message", "at")


def _one_statement(session: Session) -> bool:
    """PostgreSQL runs a data-modifying CTE: a job row and its event go in one statement. SQLite has no INSERT or
    UPDATE in WITH: two statements there (the embedded default; its round trips are function calls)."""
    return session.get_bind().dialect.name == "postgresql"


@functools.cache
def _insert_with_event(names: tuple[str, ...]) -> Any:
    """WITH inserted AS (INSERT INTO jobs ... RETURNING id) INSERT INTO job_events ...: parameters _j_<column> and
    _ev_<field> (a column's own name is reserved in VALUES), built once for insert_job's columns."""
    jobs = models.JOBS
    inserted = jobs.insert().values({name: bindparam(f"_j_{name}", type_=jobs.c[name].type) for name in names}) \
        .returning(jobs.c.id).cte("inserted")
    return _event_from(inserted.c.id, _EVENT_PARAMS).add_cte(inserted)


def _event_from(job_id: Any, names: tuple[str, ...]) -> Any:
    """INSERT INTO job_events SELECT <job_id>, :_ev_state, :_ev_message, :_ev_at: one event per row job_id comes
    from (a CTE's), none when that CTE wrote no row."""
    events = models.EVENTS
    values = [bindparam(f"_ev_{name}", type_=events.c[name].type) for name in names]
    return events.insert().from_select(["job_id", *names], select(job_id, *values))


def _move(session: Session, job_id: str, state: JobState | str, message: str,
          from_states: tuple[JobState | str, ...] | None, columns: tuple[Any, ...],
          fields: dict[str, Any], at_attempt: int | None = None) -> Row[Any] | bool:
    state = JobState(state)
    sources_ = sources(state) if from_states is None else tuple(map(JobState, from_states))
    check(sources_, state)
    values: dict[str, Any] = {"state": state.value, "status": message, **fields}
    now = models.utcnow()
    if state in TERMINAL_STATES:
        values.setdefault("end_date", now)
    expressions = {k: v for k, v in values.items() if isinstance(v, ClauseElement)}   # attempts + 1, json_merge
    params = {k: v for k, v in values.items() if k not in expressions}
    statement = models.JOBS.update().where(models.JOBS.c.id == bindparam("_job_id"),
                                           models.JOBS.c.state.in_(bindparam("_from_states", expanding=True)))
    if at_attempt is not None:
        statement = statement.where(models.JOBS.c.attempts == bindparam("_attempt"))
        params["_attempt"] = at_attempt
    if expressions:
        statement = statement.values(**expressions)
    params.update(_job_id=job_id, _from_states=[s.value for s in sources_])
    # jobs.notify comes back with the row: a job with notification subscriptions writes its deliveries here, in
    # this transaction (caesar_rest/notify.py), and every other job learns it has none without a query.
    notify_column = models.JOBS.c.notify
    returned = columns if any(c is notify_column for c in columns) else (*columns, notify_column)
    # Two statements, not one CTE as insert_job makes: a transition's statement is built per call (its SET columns
    # vary), and SQLAlchemy's cache key and compile of an UPDATE ... RETURNING in a CTE cost more client CPU than
    # the round trip saved (measured: 3.8 against 3.4 ms a job's four transactions, wall 5.9 against 5.7 ms).
    row = session.execute(statement.returning(*returned), params).first()
    if row is None:
        return False
    session.execute(models.EVENTS.insert(), {"job_id": job_id, "state": state.value, "message": message, "at": now})
    if row._mapping["notify"]:
        from . import notify

        notify.produce(session, job_id, state, message, now)
    return row if columns else True


def transition(session: Session, job_id: str, state: JobState | str, message: str = "", *,
               from_states: tuple[JobState | str, ...] | None = None, at_attempt: int | None = None,
               **fields: Any) -> bool:
    """Move a job to `state` if it is in one of from_states (default: every state the table allows it from),
    atomically, and record the event (and, for a job with notification subscriptions, its deliveries: notify.py).
    False when the job is elsewhere (another actor got there first: a cancel raced a finish). An edge outside the
    table raises IllegalTransition. at_attempt: only while the job is at that attempt (an end judged for one
    attempt never ends the next). Core statements, no ORM flush (this runs 3 times a job); values go as
    parameters, not in .values(), so the statement's cache key does not walk them."""
    return bool(_move(session, job_id, state, message, from_states, (), fields, at_attempt))


def transition_returning(session: Session, job_id: str, state: JobState | str, columns: tuple[Any, ...],
                         message: str = "", *, from_states: tuple[JobState | str, ...] | None = None,
                         at_attempt: int | None = None, **fields: Any) -> Row[Any] | None:
    """transition(), returning the updated row's `columns` (None when the job was elsewhere)."""
    moved = _move(session, job_id, state, message, from_states, columns, fields, at_attempt)
    return moved if isinstance(moved, Row) else None


# ---- the one job-row builder ---------------------------------------------------------------------------------------
@dataclass
class NewJob:
    """A validated request of any kind, ready to become a PENDING job row (the kind's create() builds it)."""

    owner: str
    kind: str                                   # "app", "tes", ...
    app: str
    app_version: str
    backend: str
    workdir_root: str                           # the owner's jobs directory; the job's is <root>/<id>
    argv: list[Any]
    spec: dict[str, Any]                        # resources, image, env, backend options
    status: str = "Job submitted with success"  # the job's first status line
    event: str = "Job submitted"                # the message of its PENDING event
    tag: str | None = None
    job_inputs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    name: str | None = None                     # a TES task's name (ListTasks filters on it in SQL)
    inputs: list[dict[str, Any]] = field(default_factory=list)   # job_inputs rows, without job_id
    tags: dict[str, str] = field(default_factory=dict)           # tes_tags rows
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


def insert_job(session: Session, new: NewJob) -> models.Job:
    """Insert the PENDING job, its inputs, tags and first event (the caller commits and publishes). Core inserts:
    the ORM's unit of work cost as much as the rest of a POST (which is CPU-bound). Returns the job, detached."""
    now = models.utcnow()
    row = {"id": new.id, "owner": new.owner, "kind": new.kind, "app": new.app, "app_version": new.app_version,
           "backend": new.backend, "tag": new.tag, "job_inputs": new.job_inputs, "argv": new.argv,
           "workdir": str(Path(new.workdir_root) / new.id), "state": PENDING.value, "status": new.status,
           "submit_date": now, "spec": new.spec, "extra": new.extra, "tes_name": new.name}
    inputs = [{"job_id": new.id, **item} for item in new.inputs]
    event = {"job_id": new.id, "state": PENDING.value, "message": new.event, "at": now}
    if _one_statement(session):
        # The row and its first event in one statement: one round trip fewer for every POST.
        session.execute(_insert_with_event(tuple(row)),
                        {**{f"_j_{k}": v for k, v in row.items()},
                         **{f"_ev_{k}": v for k, v in event.items() if k != "job_id"}})
    else:
        session.execute(models.JOBS.insert(), row)
        session.execute(models.EVENTS.insert(), event)
    if inputs:
        session.execute(models.INPUTS.insert(), inputs)
    if new.tags:
        session.execute(models.TES_TAGS.insert(),
                        [{"job_id": new.id, "key": k, "value": v} for k, v in new.tags.items()])
    return models.Job(**row, inputs=[models.JobInput(**i) for i in inputs])


# ---- the claim ------------------------------------------------------------------------------------------------------
@dataclass
class Claim:
    """What a worker holds while it runs a job: the row as claimed (detached, inputs loaded) and what it learns on
    the way, so no step queries again for what the claim already read."""

    job: models.Job
    run_date: datetime | None = None            # set when this worker moved the job to RUNNING

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def workdir(self) -> Path:
        return Path(self.job.workdir)

    @property
    def owner(self) -> str:
        return self.job.owner

    @property
    def backend(self) -> str:
        return self.job.backend

    @property
    def kind(self) -> str:
        return self.job.kind

    @property
    def inputs(self) -> list[models.JobInput]:
        return list(self.job.inputs)


def claim(session: Session, job_id: str, host: str, message: str, extra_merge: Mapping[str, Any]) -> Claim | None:
    """PENDING -> STARTED in one UPDATE (a redelivered or republished message finds the job claimed), counting the
    attempt and merging extra_merge (the worker's pid) into extra by the database. The job's inputs are read in the
    same transaction. None when the job was not PENDING."""
    from .db import json_merge

    jobs, inputs_table = models.JOBS, models.INPUTS
    has_inputs = select(inputs_table.c.job_id).where(inputs_table.c.job_id == jobs.c.id).exists().label("has_inputs")
    now = models.utcnow()
    row = transition_returning(session, job_id, STARTED, (*jobs.c, has_inputs), message, from_states=(PENDING,),
                               start_date=now, host=host, heartbeat_at=now, attempts=jobs.c.attempts + 1,
                               extra=json_merge(jobs.c.extra, dict(extra_merge)))
    if row is None:
        return None
    values = row._asdict()
    inputs = session.execute(inputs_table.select().where(inputs_table.c.job_id == job_id)).all() \
        if values.pop("has_inputs") else []
    return Claim(models.Job(**values, inputs=[models.JobInput(**i._asdict()) for i in inputs]))
