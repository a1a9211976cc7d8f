"""Jobs: the table (filters, keyset pages, live states) and a job's page (timeline, live log tail, metadata,
outputs, tarball, cancel). App jobs, OGC jobs and TES tasks alike: they are rows of the same table."""
from __future__ import annotations

from pathlib import Path

from flask import current_app, jsonify, redirect, render_template, request, send_file, url_for
from sqlalchemy import select

from .. import joblogs, jobs as service, paging
from ..api import jobs as jobs_api
from ..api.common import session, settings
from ..auth import owner_filter
from ..errors import BadRequest, CaesarError, NotFound
from ..models import ALL_STATES, Job
from . import blp, outputs, page

PER_PAGE = 25
FILTERS = ("app", "tag", "backend", "kind")
LOG_LINES = 200
#: The parts of a job page its script replaces while the job runs (templates/ui/_<name>.html, #<name>).
FRAGMENTS = ("timeline", "logs", "outputs", "metadata")


def _filters() -> dict[str, str]:
    found = {k: request.args[k].strip() for k in (*FILTERS, "state") if request.args.get(k, "").strip()}
    if "state" in found and found["state"].upper() not in ALL_STATES:
        raise BadRequest(f"Unknown state {found['state']!r}; states are {', '.join(ALL_STATES)}", parameter="state")
    return found


def _row(job: Job) -> dict:
    return {"id": job.id, "app": job.app, "kind": job.kind, "state": job.state, "tag": job.tag,
            "backend": job.backend, "owner": job.owner, "submitted": job.submit_date, "duration": service.elapsed(job),
            "finished": job.finished}


@blp.route("/jobs")
def jobs():
    found = _filters()
    query = select(Job)
    owner = owner_filter()
    if owner is not None:
        query = query.where(Job.owner == owner)
    for key, value in found.items():
        query = query.where((Job.state == value.upper()) if key == "state" else (getattr(Job, key) == value))
    token = request.args.get("page_token") or None
    with session() as s:
        rows = s.scalars(paging.after_token(query, token).limit(PER_PAGE + 1)).all()
        more = len(rows) > PER_PAGE
        rows = rows[:PER_PAGE]
        listed = [_row(j) for j in rows]
        next_token = paging.encode_token(rows[-1]) if more else None
    return page("jobs.html", jobs=listed, filters=found, next_token=next_token, first=token is None,
                states=ALL_STATES, apps=sorted(current_app.extensions["caesar_registry"].apps))


@blp.route("/jobs/states")
def states():
    """The current state of each job the table shows (?id=...&id=...), for the page's script."""
    ids = request.args.getlist("id")[:PER_PAGE * 4]
    query = select(Job).where(Job.id.in_(ids))
    owner = owner_filter()
    if owner is not None:
        query = query.where(Job.owner == owner)
    with session() as s:
        found = {j.id: {"state": j.state, "duration": _duration(service.elapsed(j)), "finished": j.finished}
                 for j in s.scalars(query)}
    return jsonify(found)


def _duration(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.1f} s"


def _job(job_id: str) -> Job:
    with session() as s:
        job = service.get_job(s, owner_filter(), job_id)
        _ = job.events, job.inputs             # loaded before the session closes
        s.expunge_all()
        return job


def _logs(job: Job) -> dict[str, str]:
    return joblogs.read(settings(), job, LOG_LINES, 256 * 1024)


def _context(job: Job) -> dict:
    archived = bool((job.extra or {}).get("output_store"))
    listed, truncated = ([], False) if archived or not job.finished else outputs.listing(
        Path(job.workdir), int(settings()["UI_TABLE_ROWS"]))
    return {"job": job, "meta": service.to_metadata(job), "logs": _logs(job), "outputs": listed,
            "truncated": truncated, "archived": archived, "duration": _duration(service.elapsed(job))}


@blp.route("/jobs/<job_id>")
def job(job_id: str):
    return page("job.html", **_context(_job(job_id)))


@blp.route("/jobs/<job_id>/live")
def live(job_id: str):
    """What changes while a job runs, as HTML fragments the page's script puts in place."""
    context = _context(_job(job_id))
    parts = {name: render_template(f"ui/_{name}.html", **context) for name in FRAGMENTS}
    job = context["job"]
    return jsonify({"state": job.state, "status": job.status, "finished": job.finished,
                    "duration": context["duration"], "html": parts})


@blp.route("/jobs/<job_id>/files/<path:rel>")
def output_file(job_id: str, rel: str):
    job = _job(job_id)
    real = outputs.resolve(Path(job.workdir), rel) if job.finished else None
    if real is None:
        raise NotFound(f"Job {job_id} has no output {rel!r}")
    inline = request.args.get("inline") == "1" and real.suffix.lower() == ".png"
    return send_file(real, mimetype="image/png" if inline else "application/octet-stream",
                     as_attachment=not inline, download_name=real.name, max_age=0)


@blp.route("/jobs/<job_id>/tarball")
def tarball(job_id: str):
    return jobs_api.output(job_id)


@blp.route("/jobs/<job_id>/cancel", methods=["POST"])
def cancel(job_id: str):
    job = _job(job_id)
    if request.form.get("confirmed") != "1":        # without the page's script: ask here
        return page("cancel.html", job=job)
    try:
        message = jobs_api.cancel(job_id).get_json()["status"]
    except CaesarError as exc:
        message = exc.message
    return redirect(url_for("ui.job", job_id=job_id, notice=message), code=303)
