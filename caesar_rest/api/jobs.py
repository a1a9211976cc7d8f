"""Jobs: submit, list, status, cancel, output tarball, logs, metadata."""
from __future__ import annotations

import json
import logging
import tarfile
from pathlib import Path

from flask import Response, jsonify, request, stream_with_context
from flask_smorest import Blueprint
from sqlalchemy import func, select
from sqlalchemy.orm import load_only

from .. import joblogs, jobs as service, notify, paging, s3store, upstream
from ..auth import current_owner, owner_filter
from ..errors import BadRequest, Conflict
from ..kinds import AppKind
from ..models import ALL_STATES, Job
from ..tarball import files_in_memory, stream_tar_gz, tar_gz
from . import docs
from .common import celery, check_active_limit, json_body, publish_or_withdraw, registry, session, settings

blp = Blueprint("jobs", __name__, description="Submit jobs and follow them")
log = logging.getLogger(__name__)

_FILE_UUID = {"type": "string", "pattern": service.UUID_HEX_RE.pattern}
_FILE_UUIDS = {"type": "array", "items": _FILE_UUID, "minItems": 1, "maxItems": upstream.DATA_INPUTS_MAX,
               "uniqueItems": True}
JOB_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["app"], "additionalProperties": False,
    "not": {"required": ["job_inputs", "job_options"], "description": "not both"},
    "properties": {
        "app": {"type": "string", "minLength": 1},
        "job_inputs": {"type": "object", "nullable": True, "description": "the app's options (name: value)"},
        "job_options": {"type": "object", "nullable": True, "description": "job_inputs under upstream's name"},
        "tag": {"type": "string", "nullable": True, "maxLength": service.TAG_MAX, "pattern": "^[^\\u0000]*$"},
        "backend": {"type": "string", "nullable": True, "description": "one of the app's backends"},
        "backend_options": {"type": "object", "nullable": True,
                            "description": "the names the backend takes (README, Backends)"},
        "notify": {"description": "where to POST the job's state changes: {url, events?, format?} or a list of "
                                  "them (README, Notifications)",
                   "oneOf": [{"$ref": "#/components/schemas/NotifyRequest"},
                             {"type": "array", "items": {"$ref": "#/components/schemas/NotifyRequest"}}]},
        "data_inputs": {"nullable": True, "description": "files bound to the app's unset file options (upstream)",
                        "oneOf": [_FILE_UUID, _FILE_UUIDS, {
                            "type": "object", "required": ["data"], "additionalProperties": False, "properties": {
                                "data": {"oneOf": [_FILE_UUID, _FILE_UUIDS]},
                                "format": {"type": "string", "nullable": True, "minLength": 1,
                                           "maxLength": upstream.FORMAT_MAX, "pattern": "^[^\\u0000]*$"}}}]}}}}}}

PAGE = docs.IntQuery("page", 1, 10**9, "page number, from 1")
PER_PAGE = docs.IntQuery("per_page", 1, 1000, "jobs a page")
PAGE_TOKEN_DOC = "next_page_token of the page before (instead of page): only a token this server gave out"
STATES = [str(x.value) for x in ALL_STATES]
TAIL = docs.IntQuery("tail", 0, 10**7, "only the last N lines")


def _owner_filter():
    return owner_filter()


@blp.route("/job", methods=["POST"])
@blp.doc(summary="Submit a job: an app name plus its options", requestBody=JOB_BODY,
         responses=docs.responses(202, "JobSummary", "The accepted job, state PENDING",
                                  (400, 404, 413, 415, 429, 503)))
def submit():
    body = json_body()
    cfg = settings()
    owner = current_owner()
    with session() as s:
        check_active_limit(s, owner)
        job = AppKind(registry()).create(s, cfg, owner, body)
        answer = {**service.to_summary(job), "status": "Job submitted with success"}
        job_id, backend = job.id, job.backend
    publish_or_withdraw(job_id, backend)
    response = jsonify(answer)
    response.status_code = 202
    response.headers["Location"] = f"{request.script_root}{request.path}/{job_id}/status"
    return response


@blp.route("/jobs", methods=["GET"])
@blp.doc(summary="List your jobs (paginated; filter by state, app, tag)",
         parameters=[PAGE.doc(), *docs.query(("page_token", "string", PAGE_TOKEN_DOC)),
                     PER_PAGE.doc(),
                     {"name": "state", "in": "query", "required": False, "style": "form", "explode": False,
                      "description": "comma-separated states",
                      "schema": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": STATES}}},
                     *docs.query(("app", "string", "app name"), ("tag", "string", "job tag"),
                                 ("backend", "string", "backend name"))],
         responses=docs.responses(200, "JobList", "A page of jobs, newest first", (400,)))
def list_jobs():
    token = request.args.get("page_token") or None
    if token is not None and "page" in request.args:
        raise BadRequest("Give either 'page' or 'page_token', not both", parameter="page_token")
    page = PAGE.read(1)
    per_page = PER_PAGE.read(settings()["JOBS_PAGE_SIZE"])
    query = select(Job)
    owner = _owner_filter()
    if owner is not None:
        query = query.where(Job.owner == owner)
    state = request.args.get("state")
    if state is not None:
        states = [x.strip().upper() for x in state.split(",")]
        bad = [x for x in states if x not in ALL_STATES]
        if bad:
            raise BadRequest(f"Unknown state {bad[0]!r}; states are {', '.join(ALL_STATES)}", parameter="state")
        query = query.where(Job.state.in_(states))
    for name in ("app", "tag", "backend"):
        if request.args.get(name) is not None:
            query = query.where(getattr(Job, name) == request.args[name])
    cap = int(settings()["JOBS_COUNT_LIMIT"])
    with session() as s:
        # Only the columns a summary shows: the JSON ones it does not (argv, spec, extra) are neither sent nor decoded.
        summary = load_only(Job.app, Job.job_inputs, Job.submit_date, Job.state, Job.status, Job.tag, Job.backend,
                            Job.end_date)
        # A token starts below the last job of the page before (an index range, at any depth); a page number
        # skips rows (OFFSET), which costs more the deeper the page.
        offset = 0 if token else (page - 1) * per_page
        rows = s.scalars(paging.after_token(query.options(summary), token)
                         .offset(offset).limit(per_page + 1)).all()
        has_next = len(rows) > per_page
        rows = rows[:per_page]
        exact = True
        if not token and not has_next and (rows or page == 1):
            total = offset + len(rows)           # the last page: the count is known without counting
        else:
            # Counting every row of a big table is most of a listing's time (10 ms at 100,000 jobs): count up
            # to JOBS_COUNT_LIMIT + 1 and say "more than" beyond it, as big APIs do.
            ids = query.with_only_columns(Job.id)
            total = s.scalar(select(func.count()).select_from((ids.limit(cap + 1) if cap > 0 else ids).subquery())) or 0
            exact = cap <= 0 or total <= cap
        answer = {"jobs": [service.to_summary(j) for j in rows], "page": None if token else page,
                  "per_page": per_page, "total": total if exact else None,
                  "pages": (total + per_page - 1) // per_page if exact else None, "has_next": has_next,
                  "next_page_token": paging.encode_token(rows[-1]) if has_next else None}
        if not exact:
            answer["total_exceeds"] = cap
        return jsonify(answer)


@blp.route("/job/<job_id>", methods=["GET"], parameters=[docs.JOB_ID])
@blp.doc(summary="A job's summary", responses=docs.responses(200, "JobSummary", "The job", (400, 404)))
def get(job_id: str):
    with session() as s:
        return jsonify(service.to_summary(service.get_job(s, _owner_filter(), job_id)))


@blp.route("/job/<job_id>/status", methods=["GET"], parameters=[docs.JOB_ID])
@blp.doc(summary="A job's state, status message, exit status, elapsed time and pid",
         responses=docs.responses(200, "JobStatus", "The job's status", (400, 404)))
def status(job_id: str):
    with session() as s:
        return jsonify(service.to_status(service.get_job(s, _owner_filter(), job_id)))


@blp.route("/job/<job_id>/cancel", methods=["GET", "POST"], parameters=[docs.JOB_ID])
@blp.doc(summary="Cancel a job wherever it runs",
         responses=docs.responses(200, "JobStatus", "Canceled, or cancel under way", (400, 404)))
def cancel(job_id: str):
    with session() as s:
        job = service.get_job(s, _owner_filter(), job_id)
        message = service.request_cancel(s, job)
    try:
        celery().control.revoke(job_id)
    except Exception as exc:   # the worker sees the DB flag anyway; revoke only spares a queued message
        log.warning("revoke of %s not sent: %s", job_id, exc.__class__.__name__)
    with session() as s:
        job = service.get_job(s, _owner_filter(), job_id)
        return jsonify({**service.to_status(job), "status": message if not job.finished else job.status})


@blp.route("/job/<job_id>/notifications", methods=["GET"], parameters=[docs.JOB_ID])
@blp.doc(summary="The job's notification targets, each delivery and every attempt at it (owner or admin only)",
         responses=docs.responses(200, "JobNotifications", "The job's notifications", (400, 404)))
def notifications(job_id: str):
    with session() as s:
        job = service.get_job(s, _owner_filter(), job_id)
        return jsonify({"job_id": job.id, "state": job.state, "subscriptions": notify.report(s, job.id)})


@blp.route("/job/<job_id>/output", methods=["GET"], parameters=[docs.JOB_ID])
@blp.doc(summary="The job directory as a streamed tar.gz, once the job has finished",
         responses=docs.binary(200, "application/gzip", "job_<id>.tar.gz", (400, 404, 409)))
def output(job_id: str):
    cfg = settings()
    with session() as s:
        job = service.get_job(s, _owner_filter(), job_id)
        if not job.finished:
            raise Conflict(f"Job {job_id} is {job.state}; its output is available once it has finished",
                           state=job.state)
        workdir = Path(job.workdir)
        archived = (job.extra or {}).get("output_store")
        # The record the worker also writes beside the outputs, built here from the database: a download just
        # after the end holds it even before the worker has written its copy.
        record = {"caesar_job.json": json.dumps(service.to_metadata(job), indent=2).encode()}
    if archived:
        body = _archived_tar_gz(cfg, archived, f"job_{job_id}", record)
    elif not workdir.is_dir():
        raise Conflict(f"Job {job_id} ended ({job.state}) without a job directory: {job.status}", state=job.state)
    else:
        exclude = () if cfg["OUTPUT_INCLUDE_INPUTS"] else ("inputs",)
        body = stream_tar_gz(workdir, f"job_{job_id}", level=int(cfg["OUTPUT_GZIP_LEVEL"]),
                             chunk=int(cfg["UPLOAD_CHUNK_BYTES"]), exclude=exclude, extra=record)
    response = Response(stream_with_context(body), mimetype="application/gzip", direct_passthrough=True)
    response.headers["Content-Disposition"] = f'attachment; filename="job_{job_id}.tar.gz"'
    return response


def _archived_tar_gz(cfg, url: str, prefix: str, extra: dict[str, bytes]):
    """The tar.gz of a job directory that moved to S3, streamed object by object (extra: top-level files given
    as bytes, standing in for objects of the same names)."""
    store = s3store.store_for(cfg)
    folder = s3store.split_url(url)[1]
    objects = [obj for obj in s3store.job_objects(store, url)      # listed before the first byte: errors are a 503
               if obj["Key"][len(folder):] not in extra]
    bucket = s3store.split_url(url)[0]

    def members():
        seen_dirs: set[str] = set()
        root = tarfile.TarInfo(prefix)
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        yield root, None
        yield from files_in_memory(prefix, extra, int(objects[0]["LastModified"].timestamp()) if objects else 0)
        for obj in objects:
            rel = obj["Key"][len(folder):]
            parts = rel.split("/")
            for i in range(1, len(parts)):
                sub = "/".join(parts[:i])
                if sub not in seen_dirs:
                    seen_dirs.add(sub)
                    d = tarfile.TarInfo(f"{prefix}/{sub}")
                    d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, int(obj["LastModified"].timestamp())
                    yield d, None
            info = tarfile.TarInfo(f"{prefix}/{rel}")
            info.size, info.mode, info.mtime = int(obj["Size"]), 0o644, int(obj["LastModified"].timestamp())
            yield info, (lambda key=obj["Key"]: store.open_stream(f"s3://{bucket}/{key}")[0])

    return tar_gz(members(), level=int(cfg["OUTPUT_GZIP_LEVEL"]))


@blp.route("/job/<job_id>/logs", methods=["GET"], parameters=[docs.JOB_ID])
@blp.doc(summary="The job's stdout and stderr (?tail=N lines)",
         parameters=[TAIL.doc()],
         responses=docs.responses(200, "JobLogs", "stdout and stderr", (400, 404)))
def logs(job_id: str):
    tail = TAIL.read(-1)
    with session() as s:
        job = service.get_job(s, _owner_filter(), job_id)
        s.expunge(job)
    texts = joblogs.read(settings(), job, None if tail < 0 else tail)
    return jsonify({"job_id": job_id, "state": job.state, **texts})


@blp.route("/job/<job_id>/metadata", methods=["GET"], parameters=[docs.JOB_ID])
@blp.doc(summary="Provenance: app and version, options, argv, backend, host, timings, exit code, input checksums",
         responses=docs.responses(200, "JobMetadata", "The job's provenance", (400, 404)))
def metadata(job_id: str):
    with session() as s:
        return jsonify(service.to_metadata(service.get_job(s, _owner_filter(), job_id)))
