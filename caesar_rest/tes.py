"""GA4GH TES v1.1 on the job engine: task creation, TES states, listing and the three views (the task document
and its validation: caesar_rest/tes_task.py).

A TES task is a job of kind "tes": same table, queues, backends and state machine as caesar-rest jobs. The
request, normalised, lives in job.extra["tes"]; the worker (workers/tes.py) writes job.extra["tes_logs"]
and, when the task fails, job.extra["tes_error"] ("executor" or "system").
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, false, func, select, true
from sqlalchemy.orm import Session

from . import storage
from .backends import backend_class
from .errors import BadRequest, NotFound
from .jobs import JOB_ID_RE
from .models import Job, TesTag
from .paging import after_token, encode_token
from .states import (
    ABORTED,
    ACTIVE_STATES,
    CANCELED,
    FAILURE,
    PENDING,
    RUNNING,
    STARTED,
    SUCCESS,
    TERMINAL_STATES,
    TIMED_OUT,
    NewJob,
    insert_job,
)
from .tes_task import host_runtime, runtime_backend, validate

TES_VERSION = "1.1.0"
VIEWS = ("MINIMAL", "BASIC", "FULL")
TES_STATES = ("UNKNOWN", "QUEUED", "INITIALIZING", "RUNNING", "PAUSED", "COMPLETE", "EXECUTOR_ERROR",
              "SYSTEM_ERROR", "CANCELED", "PREEMPTED", "CANCELING")
EXECUTOR, SYSTEM = "executor", "system"            # job.extra["tes_error"]


# ---- states -------------------------------------------------------------------------------------------------
def state_of(state: str, cancel_requested: bool, failure_kind: str | None) -> str:
    """A job's state in TES terms. A time-out is an EXECUTOR_ERROR: the executor outran the task's limit."""
    if state not in TERMINAL_STATES and cancel_requested:
        return "CANCELING"
    if state == FAILURE:
        return "EXECUTOR_ERROR" if failure_kind == EXECUTOR else "SYSTEM_ERROR"
    names: dict[str, str] = {PENDING: "QUEUED", STARTED: "INITIALIZING", RUNNING: "RUNNING", SUCCESS: "COMPLETE",
                             CANCELED: "CANCELED", TIMED_OUT: "EXECUTOR_ERROR", ABORTED: "SYSTEM_ERROR"}
    return names.get(state, "UNKNOWN")


def tes_state(job: Job) -> str:
    return state_of(job.state, job.cancel_requested, (job.extra or {}).get("tes_error"))


# extra["tes_error"] of a FAILURE, read by the database (CASE: only failed tasks' documents are opened).
FAILURE_KIND = case((Job.state == FAILURE, Job.extra["tes_error"].as_string()), else_=None)


def _state_filter(state: str) -> ColumnElement[bool]:
    """The SQL condition for the jobs that tes_state() shows as `state`."""
    def active(job_state: str) -> ColumnElement[bool]:
        return (Job.state == job_state) & (Job.cancel_requested == false())

    conditions: dict[str, ColumnElement[bool]] = {
        "QUEUED": active(PENDING), "INITIALIZING": active(STARTED), "RUNNING": active(RUNNING),
        "CANCELING": Job.state.in_(ACTIVE_STATES) & (Job.cancel_requested == true()),
        "COMPLETE": Job.state == SUCCESS, "CANCELED": Job.state == CANCELED,
        "EXECUTOR_ERROR": (Job.state == TIMED_OUT) | (FAILURE_KIND == EXECUTOR),
        "SYSTEM_ERROR": (Job.state == ABORTED)
        | ((Job.state == FAILURE) & (func.coalesce(FAILURE_KIND, "") != EXECUTOR)),
    }
    return conditions.get(state, false())


# ---- creation --------------------------------------------------------------------------------------------------------
def task_backend(settings: Mapping[str, Any], body: Any) -> str:
    """The backend of a task: the one its resources.backend_parameters.backend names (any enabled backend that runs
    TES executors: a slurm backend with a container runtime), else the runtime's (container, or local's host
    runtime). A 400 naming the parameter otherwise."""
    resources = body.get("resources") if isinstance(body, dict) else None
    params = resources.get("backend_parameters") if isinstance(resources, dict) else None
    named = [v for k, v in params.items() if isinstance(k, str) and k.lower() == "backend"] \
        if isinstance(params, dict) else []
    if not named:
        return runtime_backend(settings)
    field = "resources.backend_parameters.backend"
    name, enabled = named[0], settings.get("BACKENDS") or {}
    if not isinstance(name, str) or name not in enabled:
        raise BadRequest(f"'{field}': {name!r} is not a backend enabled here ({sorted(enabled)})", field=field)
    if not (name == "local" and host_runtime(settings)) and \
            not backend_class(name, enabled[name]).runs_tes(enabled[name] or {}):
        raise BadRequest(f"'{field}': backend {name!r} does not run TES executors here (a slurm backend needs a "
                         "container runtime and the shared working directory)", field=field)
    return name


def create_task(session: Session, settings: Mapping[str, Any], owner: str, body: Any) -> Job:
    """Validate a tesTask and insert its PENDING job (the caller commits and publishes)."""
    backend = task_backend(settings, body)
    doc, options, warnings = validate(settings, body, backend, owner)
    enabled = settings.get("BACKENDS") or {}
    chosen = backend_class(backend, enabled.get(backend))
    if len(doc["executors"]) > 1 and not chosen.blocking and not chosen.tes_batch:
        # The runner follows one remote job per task; a tes_batch backend (slurm) runs the whole task as that job.
        raise BadRequest(f"'executors': backend {backend!r} runs one executor per task, not "
                         f"{len(doc['executors'])}", field="executors")
    resources = doc.get("resources") or {}
    params = resources.get("backend_parameters") or {}
    time_limit = int(params.get("time_limit") or settings.get("TES_TIME_LIMIT") or settings["DEFAULT_TIME_LIMIT"])
    retries = dict(settings.get("TES_RETRIES") or {})
    if "retries" in params:        # the task's own count, for the reasons the setting lists
        retries = {"max": int(params["retries"]), "on": retries.get("on") or ["lost", "node_failure"]}
    ram_gb = resources.get("ram_gb")
    job = insert_job(session, NewJob(
        owner=owner, kind="tes", app="tes", app_version=TES_VERSION, backend=backend,
        argv=list(doc["executors"][0]["command"]), workdir_root=str(storage.user_dir(settings["JOBS_DIR"], owner)),
        status="Task queued", event="TES task submitted", name=doc.get("name"), tags=dict(doc.get("tags") or {}),
        spec={"image": doc["executors"][0]["image"], "cpus": resources.get("cpu_cores") or 1,
              "memory_mb": math.ceil(ram_gb * 1024) if ram_gb else None, "time_limit": time_limit,
              "disk_gb": resources.get("disk_gb"), "backend_options": options, "env": {}, "outputs": [],
              **({"retries": retries} if int(retries.get("max") or 0) > 0 else {})},
        extra={"tes": doc, "tes_logs": {"system_logs": warnings}}))
    subscribe_from_tags(session, settings, job, doc.get("tags") or {})
    return job


#: TES has no notification field: a task asks for one with these tags (README, Notifications).
NOTIFY_URL_TAG, NOTIFY_EVENTS_TAG, NOTIFY_FORMAT_TAG = "caesar.notify.url", "caesar.notify.events", \
    "caesar.notify.format"


def subscribe_from_tags(session: Session, settings: Mapping[str, Any], job: Job, tags: Mapping[str, str]) -> None:
    """tags caesar.notify.url (an http(s) URL), caesar.notify.events (comma-separated, default started,finished)
    and caesar.notify.format (default tes: the event and the task's BASIC view) make a notification target."""
    from . import notify

    url = tags.get(NOTIFY_URL_TAG)
    if url is None:
        for key in (NOTIFY_EVENTS_TAG, NOTIFY_FORMAT_TAG):
            if key in tags:
                raise notify.InvalidSubscription(f"tag {key!r} needs the tag {NOTIFY_URL_TAG!r} (where to notify)",
                                                 field=f"tags.{NOTIFY_URL_TAG}")
        return
    raw_events = tags.get(NOTIFY_EVENTS_TAG)
    events = list(notify.DEFAULT_EVENTS) if raw_events is None else \
        [e.strip() for e in raw_events.split(",") if e.strip()]
    notify.subscribe(session, job, url, events, tags.get(NOTIFY_FORMAT_TAG, "tes"), settings=settings,
                     field="tags.caesar.notify")


def _attempt_log(attempt: dict[str, Any], full: bool) -> dict[str, Any]:
    """The TaskLog of an earlier attempt: its times, host and why it was run again."""
    log: dict[str, Any] = {"logs": [], "outputs": [],
                           "metadata": {k: str(attempt[k]) for k in ("host", "attempt", "reason") if attempt.get(k)}}
    for key, field in (("start_time", "started"), ("end_time", "ended")):
        if attempt.get(field):
            log[key] = rfc3339(datetime.fromisoformat(attempt[field]))
    if full:
        log["system_logs"] = [str(attempt.get("status") or "")]
    return log


def get_task(session: Session, owner: str | None, task_id: str) -> Job:
    """A TES task of owner (any owner when None); anything else, another user's task included, is a 404."""
    job = session.get(Job, task_id) if isinstance(task_id, str) and JOB_ID_RE.match(task_id) else None
    if job is None or job.kind != "tes" or (owner is not None and job.owner != owner):
        raise NotFound(f"Task {task_id} not found", field="id")
    return job


# ---- listing ---------------------------------------------------------------------------------------------------------
def list_tasks(session: Session, owner: str | None, view: str, page_size: int, page_token: str | None,
               name_prefix: str | None, state: str | None,
               tags: dict[str, str]) -> tuple[list[dict[str, Any]], str | None]:
    """One page, newest first, rendered in `view`, and the token of the next page when there is one. Every filter
    is SQL; MINIMAL reads ids and states only, never the task documents."""
    if view == "MINIMAL":
        query = select(Job.id, Job.submit_date, Job.state, Job.cancel_requested, FAILURE_KIND.label("failure_kind"))
    else:
        query = select(Job)
    query = query.where(Job.kind == "tes")
    if owner is not None:
        query = query.where(Job.owner == owner)
    if state is not None:
        query = query.where(_state_filter(state))
    if name_prefix:
        # substr, not LIKE: exact and case-sensitive on SQLite and PostgreSQL alike, no wildcards to escape.
        query = query.where(func.substr(Job.tes_name, 1, len(name_prefix)) == name_prefix)
    for key, value in tags.items():
        tagged = select(TesTag.id).where(TesTag.job_id == Job.id, TesTag.key == key)
        query = query.where((tagged.where(TesTag.value == value) if value else tagged).exists())
    query = after_token(query, page_token, key="field").limit(page_size + 1)
    if view == "MINIMAL":
        rows: list[Any] = list(session.execute(query).all())
        tasks = [{"id": r.id, "state": state_of(r.state, r.cancel_requested, r.failure_kind)} for r in rows[:page_size]]
    else:
        rows = list(session.scalars(query).all())
        tasks = [render(job, view) for job in rows[:page_size]]
    return tasks, encode_token(rows[page_size - 1]) if len(rows) > page_size else None


# ---- views -----------------------------------------------------------------------------------------------------------
def rfc3339(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds") + "Z"


def _executor_log(entry: Mapping[str, Any], full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("start_time", "end_time"):
        if entry.get(key):
            out[key] = entry[key]
    if full:
        out["stdout"] = entry.get("stdout") or ""
        out["stderr"] = entry.get("stderr") or ""
    out["exit_code"] = int(entry["exit_code"])
    return out


def render(job: Job, view: str) -> dict[str, Any]:
    """The tesTask in one of the views: MINIMAL (id, state), BASIC (all but logs' stdout/stderr, input
    content and system_logs), FULL. Only fields of the spec appear, so strict clients can read it."""
    task: dict[str, Any] = {"id": job.id, "state": tes_state(job)}
    if view == "MINIMAL":
        return task
    full = view == "FULL"
    extra = job.extra or {}
    doc = extra.get("tes") or {}
    for key in ("name", "description"):
        if key in doc:
            task[key] = doc[key]
    if doc.get("inputs"):
        task["inputs"] = [item if full else {k: v for k, v in item.items() if k != "content"} for item in doc["inputs"]]
    for key in ("outputs", "resources", "executors", "volumes", "tags"):
        if key in doc:
            task[key] = doc[key]
    task.setdefault("executors", [])
    logs = extra.get("tes_logs") or {}
    task_log: dict[str, Any] = {
        "logs": [_executor_log(e, full) for e in logs.get("executors") or [] if e.get("exit_code") is not None],
        "outputs": [{"url": o["url"], "path": o["path"], "size_bytes": str(int(o["size_bytes"]))}
                    for o in logs.get("outputs") or []],
    }
    metadata = {"host": job.host, "backend": job.backend, "runtime": "host" if job.backend == "local" else "container"}
    task_log["metadata"] = {k: str(v) for k, v in metadata.items() if v is not None}
    if job.start_date:
        task_log["start_time"] = rfc3339(job.start_date)
    if job.end_date and job.state in TERMINAL_STATES:
        task_log["end_time"] = rfc3339(job.end_date)
    if full:
        system_logs = [str(s) for s in logs.get("system_logs") or []]
        status = job.status or ""
        if job.state not in (SUCCESS, PENDING, STARTED, RUNNING) and status and \
                not all(part in system_logs for part in status.split("; ")):
            system_logs.append(status)      # why the job ended, when the worker did not say it (lost, canceled early)
        task_log["system_logs"] = system_logs
    # A retried task has one TaskLog per attempt, oldest first, as TES says (workers/retry.py keeps them).
    task["logs"] = [*(_attempt_log(a, full) for a in extra.get("retried") or []), task_log]
    task["creation_time"] = rfc3339(job.submit_date)
    return task
