"""GA4GH TES v1.1: service-info, create, list, get and cancel tasks (served under /ga4gh/tes/v1 and /v1)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from flask import jsonify, request
from flask_smorest import Blueprint
from werkzeug.routing import BaseConverter

from .. import __version__, jobs as jobs_service, tes as service, tes_task as task_doc
from ..auth import current_owner, owner_filter
from ..errors import BadRequest, Conflict
from ..kinds import TesKind
from . import docs
from .common import celery, check_active_limit, json_body, publish_or_withdraw, session, settings

blp = Blueprint("tes", __name__, description="GA4GH Task Execution Service v1.1")
log = logging.getLogger(__name__)
PREFIX = "/ga4gh/tes/v1"
ALIAS_PREFIX = "/v1"          # Nextflow and older clients call /v1/tasks

SPECS = Path(__file__).resolve().parent.parent / "specs"
SERVICE_INFO_REF = ("https://raw.githubusercontent.com/ga4gh-discovery/ga4gh-service-info/v1.0.0/service-info.yaml"
                    "#/components/schemas/")
S = "#/components/schemas/"
VIEW_PARAM = {"name": "view", "in": "query", "required": False, "description": "MINIMAL, BASIC or FULL",
              "schema": {"type": "string", "enum": list(service.VIEWS), "default": "MINIMAL"}}
PAGE_SIZE = docs.IntQuery("page_size", 1, 2047, "Tasks per page (default TES_PAGE_SIZE, 256)")
LIST_PARAMS = [VIEW_PARAM, PAGE_SIZE.doc()] + docs.query(
    ("page_token", "string", "next_page_token of the previous page"),
    ("name_prefix", "string", "Only tasks whose name starts with this")) + [
    {"name": "state", "in": "query", "required": False, "description": "Only tasks in this TES state ('' = any)",
     "schema": {"type": "string", "enum": ["", *service.TES_STATES]}}] + [
    {"name": n, "in": "query", "required": False, "schema": {"type": "array", "items": {"type": "string"}},
     "style": "form", "explode": True, "description": d}
    for n, d in (("tag_key", "Tag names the task must have"), ("tag_value", "Values of those tags ('' = any)"))]
TASK_BODY = {"required": True, "description": "A tesTask (see the TES v1.1 specification), as this server takes it",
             "content": {"application/json": {"schema": {"$ref": S + "tesTaskRequest"}}}}
# What this server requires of a tesTask beyond the specification's schema (which stays as given): the checks of
# caesar_rest.tes_task, as far as a schema can say them. A path is absolute, its segments neither empty nor
# starting with '.' (no '..') nor holding a wildcard, its first one not a directory executors need for themselves
# (tes_task.RESERVED_DIRS); a file's path has a directory of its own above it (a mount point). A URL is http(s) or
# ftp to a named host for an input, ftp for an output (file:// under TES_FILE_ROOTS and s3:// with access to the
# bucket are taken too, by configuration: README, TES).
_NO_NUL = "^[^\\u0000]*$"
_TOP = docs.none_of(tuple(d.strip("/") for d in task_doc.RESERVED_DIRS if d != "/"), "[^/\\u0000*?\\[")
_SEG = "[^/\\u0000.*?\\[][^/\\u0000*?\\[]*"
_DIR = {"type": "string", "pattern": f"^/{_TOP}(/{_SEG})*/?$"}
_PATH = {"type": "string", "pattern": f"^/{_TOP}(/{_SEG})+$"}
_HOST = "[a-z][a-z0-9-]*\\.[a-z][a-z0-9.-]*(:[1-9][0-9]{0,3})?(/[^\\s]*)?$"
_URL = {"type": "string", "pattern": "^(https?|ftp)://" + _HOST}
_FTP_URL = _OUT_URL = {"type": "string", "pattern": "^ftp://" + _HOST}
_TEXT = {"type": "string", "pattern": _NO_NUL}
EXECUTOR_OVERLAY: dict[str, Any] = {
    "image": {"minLength": 1, "pattern": _NO_NUL},
    "command": {"minItems": 1, "items": {"type": "string", "minLength": 1, "pattern": _NO_NUL}},
    "workdir": _DIR, "stdin": _PATH, "stdout": _PATH, "stderr": _PATH,
    "env": {"additionalProperties": _TEXT,
            "description": "Variable name -> value. A name is not empty and holds no '=' or NUL (refused: 400 "
                           "naming the executor's env; OpenAPI 3.0 has no propertyNames to say it)"}}
INPUT_OVERLAY: dict[str, Any] = {"path": _PATH, "name": _TEXT, "description": _TEXT}    # url: task_request
OUTPUT_OVERLAY: dict[str, Any] = {"path": _PATH, "url": _OUT_URL, "name": _TEXT, "description": _TEXT}


def _relaxed(tes: dict[str, Any], name: str, overlay: dict[str, Any], required: tuple[str, ...] = (),
             items: dict[str, Any] | None = None) -> dict[str, Any]:
    """Component `name` as this server takes it: each property also null (a null field is left out, as unset),
    except the required ones, and narrowed by overlay; items: the schema of an array property's items."""
    component = tes[name]
    need = [*component.get("required", []), *[r for r in required if r not in component.get("required", [])]]
    props: dict[str, Any] = {}
    for key, prop in component["properties"].items():
        merged = {"allOf": [prop]} if "$ref" in prop else dict(prop)
        merged.update(overlay.get(key, {}))
        if items and key in items:
            merged["items"] = items[key]
        merged["nullable"] = key not in need
        props[key] = merged
    return {"type": "object", "properties": props, **({"required": need} if need else {})}


def task_request(tes: dict[str, Any], max_cpu_cores: int, max_content: int) -> dict[str, Any]:
    """tesTaskRequest: tesTask as this server takes it (the specification's schemas stay as given)."""
    executor = _relaxed(tes, "tesExecutor", EXECUTOR_OVERLAY, ("image", "command"))
    file_only = {"type": "string", "enum": ["FILE"], "nullable": True}
    no_content = {"type": "string", "maxLength": 0, "nullable": True}
    an_input = {**_relaxed(tes, "tesInput", INPUT_OVERLAY, ("path",)), "anyOf": [
        # content (a FILE's bytes; its url is then ignored), or a url: http(s) for a FILE, ftp for either type
        {"required": ["content"], "properties": {"content": {"type": "string", "maxLength": max_content},
                                                 "type": file_only, "url": {"nullable": True}}},
        {"required": ["url"], "properties": {"url": _URL, "content": no_content, "type": file_only}},
        {"required": ["url"], "properties": {"url": _FTP_URL, "content": no_content}},
    ]}
    an_input["properties"]["url"] = {k: v for k, v in an_input["properties"]["url"].items() if k != "pattern"}
    task = _relaxed(tes, "tesTask", {"name": _TEXT, "description": _TEXT, "executors": {"minItems": 1},
                                     "volumes": {"items": _DIR}}, ("executors",), items={
        "executors": executor, "inputs": an_input,
        "outputs": _relaxed(tes, "tesOutput", OUTPUT_OVERLAY, ("path", "url")),
    })
    resources = {"cpu_cores": {"minimum": 1, "maximum": max_cpu_cores},
                 "ram_gb": {"minimum": 0, "maximum": 1024**3}, "disk_gb": {"minimum": 0, "maximum": 1024**3},
                 "zones": {"items": {"type": "string"}}}
    task["properties"]["resources"] = {**_relaxed(tes, "tesResources", resources), "nullable": True, "anyOf": [
        # strict: only the parameters this server understands (the local backend takes no job options of its own)
        {"properties": {"backend_parameters_strict": {"type": "boolean", "enum": [False], "nullable": True}}},
        {"properties": {"backend_parameters": {"nullable": True, "additionalProperties": False, "properties": {
            "time_limit": {"type": "string"}, "retries": {"type": "string"}}}}}]}
    task["properties"]["resources"]["properties"]["backend_parameters"]["properties"] = {
        "time_limit": {"type": "string", "pattern": "^0*[1-9][0-9]{0,8}$", "description": "whole seconds"},
        "retries": {"type": "string", "pattern": "^0*([0-9]|10)$", "description": "retries (0-10)"}}
    return task


def _rewrite_refs(node: Any) -> Any:
    """The spec's schemas for our document: service-info's remote references point at local copies."""
    if isinstance(node, dict):
        return {k: (S + "ga4gh" + v[len(SERVICE_INFO_REF):] if k == "$ref" and v.startswith(SERVICE_INFO_REF)
                    else _rewrite_refs(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def register_schemas(api, max_cpu_cores: int = 64, max_content: int = 1024 * 1024) -> None:
    """The TES v1.1 schemas (and service-info's two) as components of /openapi.json, plus tesTaskView: a task
    in any view (MINIMAL holds only id and state, so nothing else is required)."""
    tes = yaml.safe_load((SPECS / "tes-v1.1.openapi.yaml").read_text(encoding="utf-8"))["components"]["schemas"]
    spec = yaml.safe_load((SPECS / "ga4gh-service-info-1.0.0.yaml").read_text(encoding="utf-8"))
    info = spec["components"]["schemas"]
    for name, schema in info.items():
        text = yaml.safe_dump(schema).replace(S, S + "ga4gh")
        api.spec.components.schema("ga4gh" + name, yaml.safe_load(text))
    for name, schema in tes.items():
        api.spec.components.schema(name, _rewrite_refs(schema))
    view = {k: v for k, v in tes["tesTask"].items() if k != "required"}
    api.spec.components.schema("tesTaskView", {**view, "required": ["id", "state"]})
    api.spec.components.schema("tesTaskRequest", _rewrite_refs(task_request(tes, max_cpu_cores, max_content)))
    api.spec.components.schema("tesTaskPage", {"type": "object", "required": ["tasks"], "properties": {
        "tasks": {"type": "array", "items": {"$ref": S + "tesTaskView"}},
        "next_page_token": {"type": "string"}}})


def _view(default: str) -> str:
    view = request.args.get("view", default)
    if view not in service.VIEWS:
        raise BadRequest(f"'view' must be one of {', '.join(service.VIEWS)}, not {view!r}", field="view")
    return view


def _storage(cfg) -> list[str]:
    return [f"file://{root}" for root in task_doc.file_roots(cfg)] + ["http://", "https://", "ftp://", "s3://"]


@blp.route("/tasks/service-info", methods=["GET"])
@blp.doc(summary="GetServiceInfo as TES 1.0 had it, where its clients ask (py-tes 0.4: Toil 5, the Snakemake "
                 "plugin): {name, doc, storage}",
         responses=docs.responses(200, {"type": "object", "required": ["name", "doc", "storage"], "properties": {
             "name": {"type": "string"}, "doc": {"type": "string"},
             "storage": {"type": "array", "items": {"type": "string"}}}}, "The service, in TES 1.0's shape"))
def service_info_v10():
    cfg = settings()
    return jsonify({"name": "caesar-rest TES",
                    "doc": f"GA4GH TES v{service.TES_VERSION} (also answering TES 1.0 clients) on the caesar-rest job "
                           f"engine, version {__version__}; GET .../service-info has the full description",
                    "storage": _storage(cfg)})


@blp.route("/service-info", methods=["GET"])
@blp.doc(summary="GetServiceInfo: this service, the storage it reaches and the backend parameters it takes",
         responses=docs.responses(200, "tesServiceInfo", "The service"))
def service_info():
    cfg = settings()
    storage = _storage(cfg)
    org = cfg.get("TES_ORGANIZATION") or {}
    return jsonify({
        "id": cfg.get("TES_SERVICE_ID") or "org.caesar-rest.tes",
        "name": "caesar-rest TES",
        "type": {"group": "org.ga4gh", "artifact": "tes", "version": service.TES_VERSION},
        "description": "GA4GH TES v1.1 on the caesar-rest job engine "
                       f"({'host processes' if task_doc.host_runtime(cfg) else 'containers'})",
        "organization": {"name": str(org.get("name") or "caesar-rest"), "url": str(org.get("url") or "https://github.com/SKA-INAF/caesar-rest")},
        "version": __version__,
        "storage": storage,
        "tesResources_backend_parameters": task_doc.supported_parameters(cfg),
    })


@blp.route("/tasks", methods=["POST"])
@blp.doc(summary="CreateTask: validate the task and queue it; answers its id", requestBody=TASK_BODY,
         responses=docs.responses(200, "tesCreateTaskResponse", "The new task's id", (400, 413, 415, 429, 503)))
def create_task():
    cfg = settings()
    # Content inputs make big documents: TES has its own size limit.
    body = json_body(int(cfg.get("TES_MAX_TASK_BYTES") or 2 * 1024 * 1024), "TES_MAX_TASK_BYTES")
    owner = current_owner()
    with session() as s:
        check_active_limit(s, owner)
        job = TesKind().create(s, cfg, owner, body)
        job_id, backend = job.id, job.backend
    publish_or_withdraw(job_id, backend, what="task")
    return jsonify({"id": job_id})


@blp.route("/tasks", methods=["GET"])
@blp.doc(summary="ListTasks: your tasks, newest first (view, page_size, page_token, name_prefix, state, "
                 "tag_key/tag_value)", parameters=LIST_PARAMS,
         responses=docs.responses(200, "tesTaskPage", "A page of tasks in the view asked for", (400,)))
def list_tasks():
    view = _view("MINIMAL")
    page_size = PAGE_SIZE.read(int(settings().get("TES_PAGE_SIZE") or 256))
    state = request.args.get("state") or None
    if state is not None and state not in service.TES_STATES:
        raise BadRequest(f"'state' must be one of {', '.join(service.TES_STATES)}, not {state!r}", field="state")
    keys, values = request.args.getlist("tag_key"), request.args.getlist("tag_value")
    if len(values) > len(keys):
        raise BadRequest("Each 'tag_value' needs a 'tag_key' before it", field="tag_value")
    tags = {k: (values[i] if i < len(values) else "") for i, k in enumerate(keys)}
    with session() as s:
        tasks, token = service.list_tasks(s, owner_filter(), view, page_size, request.args.get("page_token") or None,
                                          request.args.get("name_prefix") or None, state, tags)
    answer: dict[str, Any] = {"tasks": tasks}
    if token:
        answer["next_page_token"] = token
    return jsonify(answer)


@blp.route("/tasks/<task_id:task_id>", methods=["GET"])
@blp.doc(summary="GetTask (view MINIMAL by default, BASIC or FULL)", parameters=[VIEW_PARAM],
         responses=docs.responses(200, "tesTaskView", "The task in the view asked for", (400, 404)))
def get_task(task_id: str):
    view = _view("MINIMAL")
    with session() as s:
        return jsonify(service.render(service.get_task(s, owner_filter(), task_id), view))


@blp.route("/tasks/<task_id>:cancel", methods=["POST"])
@blp.doc(summary="CancelTask: stop the task wherever it runs; a finished task is left as it is",
         responses=docs.responses(200, "tesCancelTaskResponse", "Cancel requested (or the task had finished)",
                                  (404,)))
def cancel_task(task_id: str):
    with session() as s:
        job = service.get_task(s, owner_filter(), task_id)
        if job.finished:
            return jsonify({})      # TES: cancelling a finished task is not an error
        try:
            jobs_service.request_cancel(s, job)
        except Conflict:            # it finished meanwhile
            return jsonify({})
    try:
        celery().control.revoke(task_id)
    except Exception as exc:   # the worker sees the DB flag anyway; revoke only spares a queued message
        log.warning("revoke of %s not sent: %s", task_id, exc.__class__.__name__)
    return jsonify({})


class TaskIdConverter(BaseConverter):
    """A task id in GET /tasks/<id>: no ':', so /tasks/<id>:cancel is that rule's alone (its Allow: POST only)."""
    regex = "[^/:]+"


def register(api, app) -> None:
    """Documented under /ga4gh/tes/v1; the same views answer under /v1."""
    register_schemas(api, int(app.config.get("TES_MAX_CPU_CORES") or 64),
                     int(app.config.get("TES_MAX_CONTENT_BYTES") or 1024 * 1024))
    app.url_map.converters["task_id"] = TaskIdConverter
    api.register_converter(TaskIdConverter, lambda _: {"type": "string", "pattern": "^[^/:]+$"})
    api.register_blueprint(blp, url_prefix=PREFIX)
    app.register_blueprint(blp, url_prefix=ALIAS_PREFIX, name="tes_v1")
