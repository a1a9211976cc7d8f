"""Usage: what a user stores and has run (GET /accounting) and the same per app (GET /appstats), as the later
upstream caesar-rest offers them. Aggregates computed by the database (GROUP BY over the files and jobs tables);
an admin sees every user."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from flask import jsonify
from flask_smorest import Blueprint
from sqlalchemy import func, select

from ..auth import current_user, owner_filter
from ..models import ALL_STATES, File, Job, utcnow
from ..states import ACTIVE_STATES
from . import docs
from .common import registry, session

blp = Blueprint("accounting", __name__, description="Storage and job usage, per user and per app")

_USAGE = {"type": "object", "required": ["files", "jobs"], "properties": {
    "files": {"type": "object", "required": ["count", "bytes"], "properties": {
        "count": {"type": "integer"}, "bytes": {"type": "integer"}}},
    "jobs": {"$ref": docs.S + "JobUsage"}}}
SCHEMAS: dict[str, dict[str, Any]] = {
    "JobUsage": {"type": "object", "required": ["count", "by_state", "job_seconds"], "properties": {
        "count": {"type": "integer"},
        "by_state": {"type": "object", "additionalProperties": {"type": "integer"},
                     "description": "every job state, with its number of jobs"},
        "job_seconds": {"type": "number", "description": "seconds run: the elapsed time of every job that "
                                                         "ran, a running one's up to now"}}},
    "Accounting": {"allOf": [_USAGE, {"type": "object", "required": ["user", "admin", "users"], "properties": {
        "user": {"type": "string"}, "admin": {"type": "boolean"},
        "users": {"type": "object", "additionalProperties": _USAGE,
                  "description": "per user: the caller only, or every user for an admin"}}}]},
    "AppStats": {"type": "object", "required": ["user", "admin", "apps"], "properties": {
        "user": {"type": "string"}, "admin": {"type": "boolean"},
        "apps": {"type": "object", "additionalProperties": {"allOf": [
            {"$ref": docs.S + "JobUsage"},
            {"type": "object", "properties": {"users": {"type": "integer", "description": "distinct users"}}}]}}}},
}


def _jobs_usage() -> dict[str, Any]:
    return {"count": 0, "by_state": dict.fromkeys(ALL_STATES, 0), "job_seconds": 0.0}


def _running_seconds(s, group, owner: str | None) -> dict[Any, float]:
    """Seconds run so far by the jobs still running, per group column (few rows: the active jobs only)."""
    query = select(group, Job.run_date).where(Job.state.in_(ACTIVE_STATES), Job.run_date.is_not(None),
                                              Job.elapsed.is_(None))
    if owner is not None:
        query = query.where(Job.owner == owner)
    now = utcnow()
    out: dict[Any, float] = defaultdict(float)
    for key, run_date in s.execute(query):
        out[key] += max(0.0, (now - run_date).total_seconds())
    return out


def _job_rows(s, group, owner: str | None):
    query = select(group, Job.state, func.count(), func.coalesce(func.sum(Job.elapsed), 0.0)).group_by(group, Job.state)
    if owner is not None:
        query = query.where(Job.owner == owner)
    return s.execute(query)


@blp.route("/accounting", methods=["GET"])
@blp.doc(summary="Bytes stored, number of files, jobs by state and job-seconds used: yours, or every user's "
                 "for an admin", responses=docs.responses(200, "Accounting", "Usage"))
def accounting():
    owner = owner_filter()
    user = current_user()
    users: dict[str, dict[str, Any]] = defaultdict(lambda: {"files": {"count": 0, "bytes": 0}, "jobs": _jobs_usage()})
    if owner is not None:
        users[owner]              # the caller is listed even with nothing stored or run
    with session() as s:
        files = select(File.owner, func.count(), func.coalesce(func.sum(File.size_bytes), 0)).group_by(File.owner)
        if owner is not None:
            files = files.where(File.owner == owner)
        for who, count, size in s.execute(files):
            users[who]["files"] = {"count": int(count), "bytes": int(size)}
        for who, state, count, seconds in _job_rows(s, Job.owner, owner):
            _add(users[who]["jobs"], state, count, seconds)
        for who, seconds in _running_seconds(s, Job.owner, owner).items():
            users[who]["jobs"]["job_seconds"] += seconds
    total = {"files": {"count": 0, "bytes": 0}, "jobs": _jobs_usage()}
    for usage in users.values():
        _round(usage["jobs"])
        for key in ("count", "bytes"):
            total["files"][key] += usage["files"][key]
        total["jobs"]["count"] += usage["jobs"]["count"]
        total["jobs"]["job_seconds"] += usage["jobs"]["job_seconds"]
        for state, n in usage["jobs"]["by_state"].items():
            total["jobs"]["by_state"][state] += n
    _round(total["jobs"])
    return jsonify({"user": user.name, "admin": owner is None, **total, "users": dict(sorted(users.items()))})


@blp.route("/appstats", methods=["GET"])
@blp.doc(summary="Jobs by state, job-seconds and users per app: yours, or every user's for an admin",
         responses=docs.responses(200, "AppStats", "Usage per app"))
def appstats():
    owner = owner_filter()
    apps: dict[str, dict[str, Any]] = defaultdict(lambda: {**_jobs_usage(), "users": 0})
    for name in registry().apps:
        apps[name]
    with session() as s:
        for app, state, count, seconds in _job_rows(s, Job.app, owner):
            _add(apps[app], state, count, seconds)
        for app, seconds in _running_seconds(s, Job.app, owner).items():
            apps[app]["job_seconds"] += seconds
        users = select(Job.app, func.count(func.distinct(Job.owner))).group_by(Job.app)
        if owner is not None:
            users = users.where(Job.owner == owner)
        for app, n in s.execute(users):
            apps[app]["users"] = int(n)
    for usage in apps.values():
        _round(usage)
    return jsonify({"user": current_user().name, "admin": owner is None, "apps": dict(sorted(apps.items()))})


def _add(usage: dict[str, Any], state: str, count: int, seconds: float) -> None:
    usage["count"] += int(count)
    usage["by_state"][state] = usage["by_state"].get(state, 0) + int(count)
    usage["job_seconds"] += float(seconds or 0)


def _round(usage: dict[str, Any]) -> None:
    usage["job_seconds"] = round(usage["job_seconds"], 3)
