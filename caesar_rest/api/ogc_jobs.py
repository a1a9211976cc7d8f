"""OGC API - Processes 1.0 jobs under /ogcapi/jobs: the caller's app jobs (an admin's: everyone's), whichever API
submitted them; a job's status, results (a document, or raw), one output, and dismiss (the same cancel as the other
APIs: it reaches the job wherever it runs). TES tasks are not OGC jobs and are left out."""
from __future__ import annotations

import logging
import time
import uuid
from functools import cache
from typing import Any
from urllib.parse import urlencode

from flask import Response, request, send_file, stream_with_context
from flask_smorest import Blueprint
from sqlalchemy import Select, bindparam, select, tuple_

from .. import jobs as service, paging, s3store
from ..auth import owner_filter
from ..db import json_merge, read_connection, session_scope
from ..errors import NotFound
from ..jobs import JOB_ID_RE
from ..models import JOBS, TERMINAL_STATES, Job, utcnow
from ..ogc import PREFIX, openapi, problems
from ..ogc.formats import alternates, base, respond, root, wants_html
from ..ogc.processes import Output, outputs_of
from ..ogc.status import JobFile, file_of, iso, job_files, requested, result_value, status_info, status_of
from .common import celery, int_arg, session, settings

blp = Blueprint("ogc_jobs", __name__, description="OGC API - Processes 1.0 jobs: the engine's app jobs")
log = logging.getLogger(__name__)
LIST_QUERY = ["type", "processIDQueryParam", "status", "datetime", "minDuration", "maxDuration", "limit", "page_token"]
DISMISS_WAIT = 10.0        # seconds a dismiss waits for a running job to stop before answering
#: The columns a statusInfo shows, read as rows (no ORM instances): argv, spec, job_inputs and extra, the JSON columns
#: it does not show, are neither sent nor decoded (of extra, only ogc_dismissed, as text). Measured in-process,
#: interleaved: a page of 10 from PostgreSQL with its statusInfos 1.06 ms as ORM instances in a transaction, 0.63 ms
#: as rows in autocommit; one job 0.64 -> 0.42 ms.
SHOWN = (JOBS.c.id, JOBS.c.app, JOBS.c.state, JOBS.c.status, JOBS.c.submit_date, JOBS.c.start_date, JOBS.c.run_date,
         JOBS.c.end_date, JOBS.c.extra["ogc_dismissed"].as_string().label("ogc_dismissed"))
#: The list's filters (a request with none of them runs a statement built once, _page).
FILTERS = ("type", "processID", "status", "datetime", "minDuration", "maxDuration")
# Statements built once, their values bound at each execution: SQLAlchemy computes the key of its compiled cache for
# every new statement object, 0.25 ms here (more than PostgreSQL takes to answer a page), and once for one kept.
STATUS = select(*SHOWN, JOBS.c.owner, JOBS.c.kind).where(JOBS.c.id == bindparam("id"))


@cache
def _page(mine: bool, after: bool) -> Select:
    """The unfiltered list's statement: the caller's jobs (mine) or all, from the start or after a page token."""
    query = select(*SHOWN).where(JOBS.c.kind == "app")
    if mine:
        query = query.where(JOBS.c.owner == bindparam("owner"))
    if after:
        query = query.where(tuple_(JOBS.c.submit_date, JOBS.c.id)
                            < tuple_(bindparam("when", type_=JOBS.c.submit_date.type),
                                     bindparam("last", type_=JOBS.c.id.type)))
    return query.order_by(JOBS.c.submit_date.desc(), JOBS.c.id.desc()).limit(bindparam("limit"))


def _job(s, job_id: str) -> Job:
    """The caller's app job (any for an admin); anything else, another user's job too, is no-such-job."""
    return _yours(s.get(Job, job_id) if JOB_ID_RE.match(job_id) else None, job_id)


def _yours(job: Any, job_id: str) -> Any:
    owner = owner_filter()
    if job is None or job.kind != "app" or (owner is not None and job.owner != owner):
        raise problems.no_such_job(job_id)
    return job


@blp.route("/jobs", methods=["GET"])
@blp.doc(**openapi.op("The jobs: every app job of yours, newest first (TES tasks are left out)", "JobList",
                      query=LIST_QUERY))
def job_list():
    from ..ogc.status import filtered

    limit = int_arg("limit", 10, 1, 1000)
    token = request.args.get("page_token") or None
    owner = owner_filter()
    params: dict[str, Any] = {"limit": limit + 1}
    if any(key in request.args for key in FILTERS):
        query = select(*SHOWN).where(JOBS.c.kind == "app")
        if owner is not None:
            query = query.where(JOBS.c.owner == owner)
        query = paging.after_token(filtered(query, request.args), token).limit(bindparam("limit"))
    else:
        query = _page(owner is not None, token is not None)
        if owner is not None:
            params["owner"] = owner
        if token is not None:
            params["when"], params["last"] = paging.decode_token(token)
    top = root()
    b = top + PREFIX
    with read_connection(settings()["DATABASE_URL"]) as conn:
        rows: list[Any] = list(conn.execute(query, params).all())
    jobs = [status_info(j, b, top) for j in rows[:limit]]
    next_token = paging.encode_token(rows[limit - 1]) if len(rows) > limit else None
    args = [(k, v) for k, v in request.args.items(multi=True) if k not in ("page_token", "f")]
    here = f"{b}/jobs" + (f"?{urlencode(args)}" if args else "")
    links = alternates(here)
    if next_token:
        links.append({"href": f"{b}/jobs?{urlencode([*args, ('page_token', next_token)])}", "rel": "next",
                      "type": "application/json", "title": "the next page"})
    return respond({"jobs": jobs, "links": links}, "jobs")


@blp.route("/jobs/<job_id>", methods=["GET"])
@blp.doc(**openapi.op("A job's status", "Status", path=["jobId"]))
def job_status(job_id: str):
    # What a client polls: one primary-key read of the shown columns, as a row, outside a transaction.
    row = None
    if JOB_ID_RE.match(job_id):
        with read_connection(settings()["DATABASE_URL"]) as conn:
            row = conn.execute(STATUS, {"id": job_id}).first()
    top = root()
    return respond(status_info(_yours(row, job_id), top + PREFIX, top), "job")


@blp.route("/jobs/<job_id>", methods=["DELETE"])
@blp.doc(**openapi.op("Dismiss a job: a queued or running one is cancelled wherever it runs", "Status",
                      path=["jobId"]))
def dismiss(job_id: str):
    with session() as s:
        job = _job(s, job_id)
        active = job.state not in TERMINAL_STATES
        if active:
            service.request_cancel(s, job)
        if not (job.extra or {}).get("ogc_dismissed"):
            s.execute(JOBS.update().where(JOBS.c.id == job_id)
                      .values(extra=json_merge(JOBS.c.extra, {"ogc_dismissed": iso(utcnow())})))
    if active:
        try:
            celery().control.revoke(job_id)
        except Exception as exc:        # the worker sees the cancel flag anyway
            log.warning("revoke of %s not sent: %s", job_id, exc.__class__.__name__)
        _wait_end(job_id, DISMISS_WAIT)
    with session() as s:
        return respond(status_info(_job(s, job_id), base(), root()), "job")


def _wait_end(job_id: str, limit: float) -> None:
    deadline = time.monotonic() + limit
    url = settings()["DATABASE_URL"]
    while time.monotonic() < deadline:
        with session_scope(url) as s:
            if s.scalar(select(Job.state).where(Job.id == job_id)) in TERMINAL_STATES:
                return
        time.sleep(0.1)


@blp.route("/jobs/<job_id>/results", methods=["GET"])
@blp.doc(**openapi.results_op())
def results(job_id: str):
    with session() as s:
        job = _job(s, job_id)
        s.expunge(job)
    return results_response(job)


def _outputs(job: Job) -> dict[str, Output]:
    return outputs_of(list((job.spec or {}).get("outputs") or []))


def _ready(job: Job) -> None:
    status = status_of(job)
    if status == "dismissed":
        raise NotFound(f"Job {job.id} was dismissed; it has no results", type=problems.NO_SUCH_JOB, jobID=job.id)
    if status in ("accepted", "running"):
        raise NotFound(f"Job {job.id} is {status}; its results are ready once it is successful",
                       type=problems.RESULT_NOT_READY, jobID=job.id, status=status)


def results_response(job: Job) -> Response:
    """A finished job's results as its execute request asked (document or raw, each output by value or
    reference); a failed job's exception."""
    wants_html()                # a bad ?f= is a 400 whatever the results' form
    _ready(job)
    if status_of(job) == "failed":
        return problems.render({"code": 500, "error": "job_failed", "type": problems.NOT_CAESAR + "job_failed",
                                "message": f"Job {job.id} {job.state}: {job.status}", "jobID": job.id,
                                "state": job.state, "exit_status": job.exit_status})
    known = _outputs(job)
    chosen, mode = requested(job, known)
    b, cap = base(), int(settings()["OGC_INLINE_MAX_BYTES"])
    store = _store(job)
    files = job_files(job, store)
    monitor = f'<{b}/jobs/{job.id}>; rel="monitor"; type="application/json"'
    if mode == "document":
        values = {ident: result_value(known[ident], job, how, b, cap, files, store) for ident, how in chosen.items()}
        doc = {k: v for k, v in values.items() if v is not None}
        return respond(doc, "results", headers={"Link": monitor}, job=status_info(job, b, root()))
    links = [f'<{b}/jobs/{job.id}/results/{i}>; rel="related"; type="{known[i].media_type}"; title="{i}"'
             for i in chosen]
    if all(how == "reference" for how in chosen.values()):
        response = Response(status=204)
        response.headers["Link"] = ", ".join([*links, monitor])
        return response
    if len(chosen) == 1:
        response = output_response(job, known[next(iter(chosen))], files, store)
        response.headers["Link"] = monitor
        return response
    return _multipart(job, known, chosen, b, cap, files, store)


def _store(job: Job) -> Any:
    """The S3 store of a job whose directory moved there (None: it is on the local disk)."""
    return s3store.store_for(settings()) if (job.extra or {}).get("output_store") else None


def _multipart(job: Job, known: dict[str, Output], chosen: dict[str, str], b: str, cap: int,
               files: list[JobFile], store: Any) -> Response:
    """Several raw outputs: multipart/related, a part each; a part by reference (or over cap) is a
    message/external-body naming its URL (RFC 2017)."""
    import base64

    boundary = uuid.uuid4().hex
    body = bytearray()
    for ident, how in chosen.items():
        out = known[ident]
        value = result_value(out, job, how, b, cap, files, store)
        if value is None:
            continue
        body += f"--{boundary}\r\nContent-ID: <{ident}>\r\n".encode()
        if "href" in value:
            body += (f'Content-Type: message/external-body; access-type=URL; URL="{value["href"]}"\r\n\r\n'
                     f"Content-Type: {out.media_type}\r\n\r\n").encode()
        else:
            data = base64.b64decode(value["value"]) if value.get("encoding") == "base64" else value["value"].encode()
            body += f"Content-Type: {out.media_type}\r\n\r\n".encode() + data
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return Response(bytes(body), mimetype=f'multipart/related; boundary="{boundary}"')


def output_response(job: Job, out: Output, files: list[JobFile], store: Any) -> Response:
    """One output of a successful job, its bytes: a file of the job directory (on disk or in S3), or the
    archive (the tar.gz caesar-rest's /job/<id>/output streams)."""
    if out.glob is None:
        from .jobs import output

        return output(job.id)
    found = file_of(out, files)
    if found is None:
        raise NotFound(f"Job {job.id} wrote no file for output {out.id!r} ({out.glob})", output=out.id,
                       jobID=job.id)
    if found.path is not None:
        return send_file(found.path, mimetype=out.media_type, download_name=found.name, conditional=True)
    response = Response(stream_with_context(found.chunks(store)), mimetype=out.media_type, direct_passthrough=True)
    response.headers["Content-Length"] = str(found.size)
    return response


@blp.route("/jobs/<job_id>/results/<output_id>", methods=["GET"])
@blp.doc(**openapi.op("One output of a successful job, its bytes (archive: the job's tar.gz)", openapi.BINARY,
                      path=["jobId", "outputID"]))
def one_output(job_id: str, output_id: str):
    wants_html()                # a bad ?f= is a 400 (the bytes are the same either way)
    with session() as s:
        job = _job(s, job_id)
        s.expunge(job)
    _ready(job)
    if status_of(job) == "failed":
        return results_response(job)
    known = _outputs(job)
    if output_id not in known:
        raise NotFound(f"Process {job.app!r} has no output {output_id!r}; outputs are {list(known)}",
                       output=output_id)
    store = _store(job)
    return output_response(job, known[output_id], job_files(job, store), store)
