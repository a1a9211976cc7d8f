"""GA4GH TES v1.1 on the job engine: task creation, TES states, listing and the three views (the task document
and its validation: caesar_rest/tes_task.py).

A TES task is a job of kind "tes": same table, queues, backends and state machine as caesar-rest jobs. The
request, normalised, lives in job.extra["tes"]; the worker (workers/tes.py) writes job.extra["tes_logs"]
and, when the task fails, job.extra["tes_error"] ("executor" or "system").
"""
from __future__ import annotations

import math
import uuid as uuidlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import storage
from .errors import NotFound
from .jobs import JOB_ID_RE
from .models import (ABORTED, ACTIVE_STATES, CANCELED, FAILURE, PENDING, RUNNING, STARTED, SUCCESS,
                     TERMINAL_STATES, TIMED_OUT, Job, JobEvent, utcnow)
from .paging import after_token, encode_token
from .tes_task import runtime_backend, validate

TES_VERSION = "1.1.0"
VIEWS = ("MINIMAL", "BASIC", "FULL")
TES_STATES = ("UNKNOWN", "QUEUED", "INITIALIZING", "RUNNING", "PAUSED", "COMPLETE", "EXECUTOR_ERROR",
              "SYSTEM_ERROR", "CANCELED", "PREEMPTED", "CANCELING")
EXECUTOR, SYSTEM = "executor", "system"            # job.extra["tes_error"]
# Which job states can show as a TES state (the exact state is decided per job by tes_state()).
JOB_STATES_FOR = {"QUEUED": (PENDING,), "INITIALIZING": (STARTED,), "RUNNING": (RUNNING,),
                  "CANCELING": ACTIVE_STATES, "COMPLETE": (SUCCESS,), "EXECUTOR_ERROR": (FAILURE, TIMED_OUT),
                  "SYSTEM_ERROR": (FAILURE, ABORTED), "CANCELED": (CANCELED,)}


# ---- states -------------------------------------------------------------------------------------------------
def tes_state(job: Job) -> str:
    """The job's state in TES terms. A time-out is an EXECUTOR_ERROR: the executor outran the task's limit."""
    state = job.state
    if state not in TERMINAL_STATES and job.cancel_requested:
        return "CANCELING"
    if state == FAILURE:
        return "EXECUTOR_ERROR" if (job.extra or {}).get("tes_error") == EXECUTOR else "SYSTEM_ERROR"
    return {PENDING: "QUEUED", STARTED: "INITIALIZING", RUNNING: "RUNNING", SUCCESS: "COMPLETE",
            CANCELED: "CANCELED", TIMED_OUT: "EXECUTOR_ERROR", ABORTED: "SYSTEM_ERROR"}.get(state, "UNKNOWN")


# ---- creation ---------------------------------------------------------------------------------------------------------
def create_task(session: Session, settings: Mapping[str, Any], owner: str, body: Any) -> Job:
    """Validate a tesTask and insert its PENDING job (the caller commits and publishes)."""
    backend = runtime_backend(settings)
    doc, options, warnings = validate(settings, body, backend, owner)
    resources = doc.get("resources") or {}
    params = resources.get("backend_parameters") or {}
    time_limit = int(params.get("time_limit") or settings.get("TES_TIME_LIMIT") or settings["DEFAULT_TIME_LIMIT"])
    ram_gb = resources.get("ram_gb")
    job_id = str(uuidlib.uuid4())
    now = utcnow()
    job = Job(id=job_id, owner=owner, kind="tes", app="tes", app_version=TES_VERSION, backend=backend,
              tag=None, job_inputs={}, argv=list(doc["executors"][0]["command"]),
              workdir=str(storage.user_dir(settings["JOBS_DIR"], owner) / job_id), state=PENDING,
              status="Task queued", submit_date=now,
              spec={"image": doc["executors"][0]["image"], "cpus": resources.get("cpu_cores") or 1,
                    "memory_mb": math.ceil(ram_gb * 1024) if ram_gb else None, "time_limit": time_limit,
                    "disk_gb": resources.get("disk_gb"), "backend_options": options, "env": {}, "outputs": []},
              extra={"tes": doc, "tes_logs": {"system_logs": warnings}})
    session.add(job)
    session.add(JobEvent(job_id=job_id, state=PENDING, message="TES task submitted", at=now))
    return job


def get_task(session: Session, owner: str | None, task_id: str) -> Job:
    """A TES task of owner (any owner when None); anything else, another user's task included, is a 404."""
    job = session.get(Job, task_id) if isinstance(task_id, str) and JOB_ID_RE.match(task_id) else None
    if job is None or job.kind != "tes" or (owner is not None and job.owner != owner):
        raise NotFound(f"Task {task_id} not found", field="id")
    return job


# ---- listing -----------------------------------------------------------------------------------------------------------
def list_tasks(session: Session, owner: str | None, page_size: int, page_token: str | None,
               name_prefix: str | None, state: str | None, tags: dict[str, str]) -> tuple[list[Job], str | None]:
    """One page, newest first, and the token of the next page when there is one."""
    query = select(Job).where(Job.kind == "tes")
    if owner is not None:
        query = query.where(Job.owner == owner)
    if state is not None:
        query = query.where(Job.state.in_(JOB_STATES_FOR.get(state, ())))
    query = after_token(query, page_token, key="field")

    def wanted(job: Job) -> bool:
        doc = (job.extra or {}).get("tes") or {}
        if name_prefix and not str(doc.get("name") or "").startswith(name_prefix):
            return False
        if state is not None and tes_state(job) != state:
            return False
        have = doc.get("tags") or {}
        return all(k in have and (not v or have[k] == v) for k, v in tags.items())

    found: list[Job] = []
    batch, offset = max(page_size + 1, 200), 0
    while len(found) <= page_size:
        rows = session.scalars(query.offset(offset).limit(batch)).all()
        found.extend(j for j in rows if wanted(j))
        if len(rows) < batch:
            break
        offset += batch
    page = found[:page_size]
    return page, encode_token(page[-1]) if len(found) > page_size else None


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
    task["logs"] = [task_log]
    task["creation_time"] = rfc3339(job.submit_date)
    return task
