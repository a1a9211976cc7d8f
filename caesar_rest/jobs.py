"""The job service shared by every HTTP surface and the workers: create, transition, cancel, describe."""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from . import notify, storage, upstream
from .apps import App, Registry, ResolvedFile, render
from .errors import BadRequest, Conflict, InvalidOption, NotFound
from .models import File, Job, JobInput, utcnow
from .states import ACTIVE_STATES, CANCELED, PENDING, TERMINAL_STATES, NewJob, insert_job, transition

UUID_HEX_RE = re.compile(r"^[0-9a-f]{32}$")
JOB_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TAG_MAX = 255


def get_file(session: Session, owner: str | None, file_uuid: str) -> File:
    if not isinstance(file_uuid, str) or not UUID_HEX_RE.match(file_uuid):
        raise BadRequest(f"{file_uuid!r} is not a file uuid (32 lower-case hex digits)")
    record = session.get(File, file_uuid)
    if record is None or (owner is not None and record.owner != owner):
        raise NotFound(f"File with uuid {file_uuid} not found on the system!")
    return record


def get_job(session: Session, owner: str | None, job_id: str) -> Job:
    """A job of owner (any owner when None: admins). Another user's job is a 404 like a missing one."""
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise BadRequest(f"{job_id!r} is not a job id (a UUID like 69ca62d7-5098-4fe7-a675-63895a2d06b1)")
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.owner != owner):
        raise NotFound(f"Job {job_id} not found")
    return job


def _file_resolver(session: Session, settings: Mapping[str, Any], owner: str):
    data_dir = storage.user_dir(settings["DATA_DIR"], owner)

    def resolve(value: str, option: str) -> ResolvedFile:
        if UUID_HEX_RE.match(value):
            record = session.get(File, value)
            if record is None or record.owner != owner:
                raise InvalidOption(f"Option {option!r}: no uploaded file with uuid {value}", option=option)
        else:
            real = storage.within(data_dir, value)
            if real is None:
                raise InvalidOption(f"Option {option!r}: {value!r} is outside your data directory; "
                                    "give the uuid or the path returned by /upload", option=option)
            record = session.scalar(select(File).where(File.path == str(real), File.owner == owner))
            if record is None:
                raise InvalidOption(f"Option {option!r}: {value!r} is not an uploaded file", option=option)
        return ResolvedFile(uuid=record.uuid, path=record.path, filename=record.filename_orig,
                            size_bytes=record.size_bytes, sha256=record.sha256)

    return resolve


def create_job(session: Session, settings: Mapping[str, Any], registry: Registry, owner: str,
               body: Any) -> Job:
    """Validate a caesar-rest job request and insert the PENDING job (the caller commits and publishes)."""
    if not isinstance(body, dict):
        raise BadRequest("The job request must be a JSON object with 'app' and 'job_inputs'")
    known = {"app", "job_inputs", "job_options", "data_inputs", "tag", "backend", "backend_options", "notify"}
    extra = sorted(set(body) - known)
    if extra:
        raise BadRequest(f"Unknown field {extra[0]!r} in the job request; expected {sorted(known)}", field=extra[0])
    name = body.get("app")
    if not isinstance(name, str) or not name:
        raise BadRequest("The job request needs 'app', the name of a registered app (see /apps)", field="app")
    app = registry.get(name)
    if app is None:
        raise NotFound(f"Unknown app {name!r}; GET /apps lists the registered apps", field="app")
    targets = notify.parse_request(body["notify"]) if "notify" in body else []
    tag = body.get("tag")
    if tag is not None and (not isinstance(tag, str) or len(tag) > TAG_MAX or "\x00" in tag):
        raise BadRequest(f"'tag' must be a string of at most {TAG_MAX} characters", field="tag")
    backend = _pick_backend(settings, app, body.get("backend"))
    _check_image(settings, backend, app)
    backend_options = {**app.backend_options.get(backend, {}),
                       **_check_backend_options(settings, backend, body.get("backend_options"))}
    _key, options = upstream.job_inputs(body)
    resolve = _file_resolver(session, settings, owner)
    data = upstream.parse_data_inputs(body.get("data_inputs"))
    left: list[ResolvedFile] = []
    if data is not None:      # bound to the app's unset file options first; the rest staged beside them
        options, left = upstream.bind(app, options, data, resolve,
                                      lambda uuid: session.get(File, uuid).format)  # type: ignore[union-attr]
    rendered = render(app, options, resolve)
    extra_files: list[tuple[str, ResolvedFile, str]] = []
    taken = {rel for _o, _f, rel in rendered.files}
    for resolved in left:
        rel = f"inputs/{resolved.filename}"
        if rel not in taken:
            taken.add(rel)
            extra_files.append(("data_inputs", resolved, rel))
    inputs: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for option, resolved, rel in rendered.files + extra_files:
        if (resolved.uuid, option) in seen:
            continue
        seen.add((resolved.uuid, option))
        stored = session.get(File, resolved.uuid)
        inputs.append({"file_uuid": resolved.uuid, "option": option, "relpath": rel, "sha256": resolved.sha256,
                       "size_bytes": resolved.size_bytes,
                       "crc64nvme": stored.crc64nvme if stored is not None else None})
    job = insert_job(session, NewJob(
        owner=owner, kind="app", app=app.name, app_version=app.version, backend=backend, tag=tag,
        job_inputs=rendered.inputs, argv=rendered.argv, workdir_root=str(storage.user_dir(settings["JOBS_DIR"], owner)),
        spec={**app_spec(app), "backend_options": backend_options}, inputs=inputs))
    for target in targets:       # a bad one raises: the caller's transaction, job and all, is rolled back
        notify.subscribe(session, job, target["url"], target["events"], target["fmt"], settings=settings,
                         field=target["field"])
    return job


def app_spec(app: App) -> dict[str, Any]:
    return {"image": app.image, "image_pull": app.image_pull, "cpus": app.cpus, "memory_mb": app.memory_mb,
            "time_limit": app.time_limit, "outputs": app.outputs, "env": {},
            "network": app.network, **({"retries": app.retries} if app.retries else {})}


def _pick_backend(settings: Mapping[str, Any], app: App, requested: Any) -> str:
    if requested is None:
        backend = app.default_backend
    elif not isinstance(requested, str) or requested not in app.backends:
        raise BadRequest(f"'backend' must be one of {app.backends} for app {app.name!r}, not {requested!r}",
                         field="backend")
    else:
        backend = requested
    if backend not in settings["BACKENDS"]:
        raise BadRequest(f"Backend {backend!r} of app {app.name!r} is not enabled on this server "
                         f"(enabled: {sorted(settings['BACKENDS'])})", field="backend")
    return backend


def _check_image(settings: Mapping[str, Any], backend: str, app: App) -> None:
    """Whether the backend can run the app's image (ALLOWED_IMAGES for those that run it, a Slurm backend without
    a container runtime refuses it): a 400 before any row exists."""
    from .backends import backend_class

    if not app.image:
        return
    backend_settings = settings["BACKENDS"].get(backend) or {}
    problem = backend_class(backend, backend_settings).check_image(settings, backend_settings, app.image)
    if problem:
        raise BadRequest(f"App {app.name!r}: {problem}", field="app")


def _check_backend_options(settings: Mapping[str, Any], backend: str, options: Any) -> dict[str, Any]:
    """Per-job backend options (e.g. which Pulsar server); each backend class lists the names it takes."""
    from .backends import backend_class

    if options is None:
        return {}
    if not isinstance(options, dict):
        raise BadRequest("'backend_options' must be a JSON object", field="backend_options")
    cls = backend_class(backend, settings["BACKENDS"].get(backend))
    allowed = set(cls.job_options)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise BadRequest(f"Backend {backend!r} takes no option {unknown[0]!r}"
                         f"{'; it takes ' + ', '.join(sorted(allowed)) if allowed else ''}", field="backend_options")
    problem = cls.check_job_options(settings["BACKENDS"].get(backend) or {}, options)
    if problem:
        raise BadRequest(problem, field="backend_options")
    return options


def request_cancel(session: Session, job: Job) -> str:
    """Flag the job for cancel; a PENDING job is CANCELED at once. Returns the message for the user."""
    if job.state in TERMINAL_STATES:
        raise Conflict(f"Job {job.id} already finished ({job.state}); nothing to cancel", state=job.state)
    session.execute(update(Job).where(Job.id == job.id).values(cancel_requested=True)
                    .execution_options(synchronize_session=False))
    if transition(session, job.id, CANCELED, "Job canceled by user before it started", from_states=(PENDING,)):
        return "Job canceled"
    return "Cancel requested; the job will stop shortly"


def elapsed(job: Job) -> float | None:
    if job.run_date is None:
        return job.elapsed
    end = job.end_date or utcnow()
    return round((end - job.run_date).total_seconds(), 3)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def to_summary(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "app": job.app, "job_inputs": job.job_inputs, "submit_date": _iso(job.submit_date),
            "state": job.state, "status": job.status, "tag": job.tag, "backend": job.backend,
            "end_date": _iso(job.end_date)}


def to_status(job: Job) -> dict[str, Any]:
    e = elapsed(job)
    return {"job_id": job.id, "state": job.state, "status": job.status, "exit_status": job.exit_status,
            "elapsed_time": None if e is None else str(e), "pid": None if job.pid is None else str(job.pid),
            "cancel_requested": job.cancel_requested}


def to_metadata(job: Job) -> dict[str, Any]:
    """Provenance of a job, as a user citing a result would want it."""
    return {
        "job_id": job.id, "app": job.app, "app_version": job.app_version, "kind": job.kind,
        "job_inputs": job.job_inputs, "argv": job.argv, "backend": job.backend, "host": job.host,
        "handle": job.handle, "state": job.state, "status": job.status, "exit_status": job.exit_status,
        "attempts": job.attempts, "tag": job.tag, "owner": job.owner,
        "resources": {k: job.spec.get(k) for k in ("cpus", "memory_mb", "time_limit")},
        "image": job.spec.get("image"),
        "timings": {"submitted": _iso(job.submit_date), "started": _iso(job.start_date),
                    "running": _iso(job.run_date), "finished": _iso(job.end_date), "elapsed_time": elapsed(job)},
        "inputs": [{"option": i.option, "uuid": i.file_uuid, "path": i.relpath, "sha256": i.sha256,
                    "crc64nvme": i.crc64nvme, "size_bytes": i.size_bytes} for i in job.inputs],
        "outputs": (job.extra or {}).get("outputs"),
        "retries": {"policy": (job.spec or {}).get("retries"),
                    "previous_attempts": (job.extra or {}).get("retried", [])},
        "kept_remote": (job.extra or {}).get("kept_remote"),
        "events": [{"state": ev.state, "message": ev.message, "at": _iso(ev.at)} for ev in job.events],
    }


def file_in_use(session: Session, file_uuid: str) -> str | None:
    """Id of an active job reading the file, if any."""
    return session.scalar(select(Job.id).join(JobInput).where(JobInput.file_uuid == file_uuid,
                                                               Job.state.in_(ACTIVE_STATES)).limit(1))


def job_dir(job: Job) -> Path:
    return Path(job.workdir)
