"""OGC API - Processes 1.0 under /ogcapi: landing page, conformance, the API document, processes (the apps) and their
execution, which creates an ordinary app job through the app kind (same validation as POST /job, same queues,
workers, backends, auth and isolation). The jobs routes are in ogc_jobs.py."""
from __future__ import annotations

import time

from flask import Blueprint as FlaskBlueprint, current_app, jsonify, redirect, request
from flask_smorest import Blueprint
from werkzeug.routing import BaseConverter, Map, Rule

from .. import __version__, errors
from ..auth import current_owner
from ..db import session_scope
from ..kinds import AppKind
from ..models import JOBS, TERMINAL_STATES, Job
from ..ogc import CONFORMANCE, PREFIX, REL, callbacks, execute as ogc_execute, openapi, problems, processes
from ..ogc.formats import alternates, base, respond, root, wants_html
from ..ogc.status import status_info
from .common import check_active_limit, json_body, publish_or_withdraw, registry, session, settings

blp = Blueprint("ogc", __name__, description="OGC API - Processes 1.0: processes are the registered apps, jobs the "
                                              "engine's app jobs")
OAS_TYPE = "application/vnd.oai.openapi+json;version=3.0"


def _app(process_id: str):
    app = registry().get(process_id)
    if app is None:
        raise problems.no_such_process(process_id)
    return app


@blp.route("/", methods=["GET"], strict_slashes=False)
@blp.doc(**openapi.op("Landing page: links to the API document, conformance, processes and jobs", "LandingPage"))
def landing():
    b = base()
    doc = {"title": "caesar-rest: OGC API - Processes",
           "description": "The registered apps of this caesar-rest service as OGC API - Processes 1.0 processes; "
                          "their jobs are the service's own jobs.",
           "links": [*alternates(b + "/"),
                     {"href": b + "/api", "rel": "service-desc", "type": OAS_TYPE, "title": "the API definition"},
                     {"href": root() + "/swagger", "rel": "service-doc", "type": "text/html",
                      "title": "the API documentation (Swagger UI)"},
                     {"href": b + "/conformance", "rel": "conformance", "type": "application/json",
                      "title": "conformance classes"},
                     {"href": b + "/conformance", "rel": REL + "conformance", "type": "application/json",
                      "title": "conformance classes"},
                     {"href": b + "/processes", "rel": REL + "processes", "type": "application/json",
                      "title": "the processes"},
                     {"href": b + "/jobs", "rel": REL + "job-list", "type": "application/json", "title": "jobs"}]}
    return respond(doc, "landing")


@blp.route("/conformance", methods=["GET"])
@blp.doc(**openapi.op("The conformance classes this server meets", "ConformanceDeclaration"))
def conformance():
    return respond({"conformsTo": CONFORMANCE, "links": alternates(base() + "/conformance")}, "conformance")


@blp.route("/api", methods=["GET"])
@blp.doc(**openapi.api_op())
def api_document():
    if wants_html():
        return redirect(root() + "/swagger")
    spec = current_app.extensions["caesar_ogc_api"].spec.to_dict()
    response = jsonify(openapi.surface(spec, root(), __version__))
    response.mimetype = OAS_TYPE.split(";")[0]
    response.headers["Content-Type"] = OAS_TYPE
    return response


@blp.route("/processes", methods=["GET"])
@blp.doc(**openapi.op("The processes: every registered app", "ProcessList"))
def process_list():
    cfg, b = settings(), base()
    apps = sorted(registry().apps.values(), key=lambda a: a.name)
    doc = {"processes": [processes.summary(a, cfg, b) for a in apps], "links": alternates(b + "/processes")}
    return respond(doc, "processes")


class ProcessIdConverter(BaseConverter):
    """A process id in a path: any segment (an unknown one is a 404 no-such-process); documented as the registered
    apps' names."""


@blp.route("/processes/<process:process_id>", methods=["GET"])
@blp.doc(**openapi.op("A process: its inputs (JSON Schema from the app's options) and outputs", "ProcessDescription",
                      path=["processID"]))
def process_description(process_id: str):
    return respond(processes.description(_app(process_id), settings(), base()), "process")


def execution(process_id: str):
    """POST /processes/<id>/execution. Not documented under its template: each process's path is, with the inputs
    and outputs of its own (register)."""
    app = _app(process_id)
    cfg = settings()
    owner = current_owner()
    inline = int(cfg["OGC_INLINE_MAX_BYTES"])
    doc = json_body(limit=max(int(cfg["MAX_JSON_BYTES"]), inline * 4 // 3 + 64 * 1024))
    # RFC 7240: comma-separated preferences, each a token with optional ;parameters ("respond-async; wait=10").
    prefer = {p.split(";")[0].strip().lower() for p in request.headers.get("Prefer", "").split(",")}
    wants_async = "respond-async" in prefer
    run_async = wants_async or not processes.sync_allowed(app, cfg)
    plan = ogc_execute.parse(cfg, app, doc, request.host, owner, request.args.get("response"))
    try:
        with session() as s:
            check_active_limit(s, owner)
            job = AppKind(registry()).create(s, cfg, owner, plan.body)
            # What the results, the status and the callbacks' payloads (rendered in the workers) are made from.
            ogc = {"outputs": plan.outputs, "response": plan.response, "mode": "async" if run_async else "sync",
                   "base": base(), "root": root(), "cap": inline}
            if plan.subscriber:
                ogc["subscriber"] = plan.subscriber
            s.execute(JOBS.update().where(JOBS.c.id == job.id).values(extra={"ogc": ogc}))
            if plan.subscriber:
                callbacks.subscribe(s, job, plan.subscriber, cfg)
            job_id, backend = job.id, job.backend
        publish_or_withdraw(job_id, backend)
    except BaseException:
        ogc_execute.remove_files(cfg, plan.made_files)
        raise
    if not run_async:
        ended = _wait(job_id, float(cfg["OGC_SYNC_WAIT"]))
        if ended is not None:
            from .ogc_jobs import results_response

            return results_response(ended)
    # Asynchronous, asked or because the process cannot run synchronously, or a synchronous run that did not end
    # within OGC_SYNC_WAIT (RFC 7240: a server may answer a preference otherwise): the job's status, 201. An async
    # answer is the job as it was accepted (no second read: it may have moved on since, as it may a moment later).
    if run_async:
        info = status_info(job, base(), root())
    else:
        with session() as s:
            info = status_info(s.get_one(Job, job_id), base(), root())
    headers = {"Location": f"{base()}/jobs/{job_id}"}
    if wants_async:
        headers["Preference-Applied"] = "respond-async"
    return respond(info, "job", status=201, headers=headers)


def _wait(job_id: str, limit: float) -> Job | None:
    """The job once it has ended, or None after limit seconds. Polled every 10 ms for the first second (a short
    job is answered within 10 ms of its end; one look is a primary-key read), then less often, up to every 0.25 s."""
    url = settings()["DATABASE_URL"]
    start = time.monotonic()
    deadline = start + limit
    pause = 0.01
    while True:
        with session_scope(url) as s:
            job = s.get(Job, job_id)
            if job is not None and job.state in TERMINAL_STATES:
                s.expunge(job)
                return job
        now = time.monotonic()
        if now + pause > deadline:
            return None
        time.sleep(pause)
        if now - start > 1.0:
            pause = min(pause * 1.25, 0.25)


# Flask's own add_url_rule: flask-smorest would document the template, whose one body cannot say which inputs each
# process takes.
FlaskBlueprint.add_url_rule(blp, "/processes/<process:process_id>/execution", "execution", execution,
                            methods=["POST"])


def register(api, app) -> None:
    """The blueprint under /ogcapi (documented in /openapi.json and its own /ogcapi/api), its exceptions, its
    schemas, and one execution path per registered process, each with its own execute request."""
    from . import ogc_jobs

    apps = app.extensions["caesar_registry"].apps
    app.url_map.converters["process"] = ProcessIdConverter
    api.register_converter(ProcessIdConverter,
                           lambda _c: {"type": "string", "enum": sorted(apps)} if apps else {"type": "string"})
    openapi.register_schemas(api)
    api.register_blueprint(blp, url_prefix=PREFIX)
    api.register_blueprint(ogc_jobs.blp, url_prefix=PREFIX)
    for name in sorted(apps):
        rule = Rule(f"{PREFIX}/processes/{name}/execution", endpoint="ogc.execution")
        Map([rule])                 # binds the rule (its path, no argument): what flask-smorest's plugin reads
        api.spec.path(rule=rule, operations={"post": openapi.execute_op(apps[name])})
    app.extensions["caesar_ogc_api"] = api
    errors.SURFACE_RENDERERS[PREFIX] = problems.render
