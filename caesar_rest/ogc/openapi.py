"""The OpenAPI description of /ogcapi, from the standard's own fragments (caesar_rest/specs/ogcapi-processes-1.0,
unmodified, OGC licence beside them): its schemas become components named ogc_<file> in /openapi.json, its
responses and parameters are used as they are, and /ogcapi/api serves the part of the document under /ogcapi."""
from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from . import PREFIX

SPEC_DIR = Path(__file__).resolve().parent.parent / "specs" / "ogcapi-processes-1.0" / "core" / "openapi"
S = "#/components/schemas/"
_REF = re.compile(r"^(?:\.\./schemas/)?([A-Za-z]+)\.yaml$")


def _rewrite(node: Any) -> Any:
    """The fragments' relative $refs ("link.yaml", "../schemas/link.yaml") as component references; examples
    pointing at files outside the fragments are left out."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ("examples", "example") and isinstance(value, dict | list):
                continue
            if key == "$ref" and isinstance(value, str) and _REF.match(value):
                out[key] = S + "ogc_" + _REF.match(value).group(1)        # type: ignore[union-attr]
            else:
                out[key] = _rewrite(value)
        return out
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


def _load(kind: str, name: str) -> dict[str, Any]:
    return _rewrite(yaml.safe_load((SPEC_DIR / kind / f"{name}.yaml").read_text(encoding="utf-8")))


@cache
def schemas() -> dict[str, dict[str, Any]]:
    found = {f"ogc_{p.stem}": _load("schemas", p.stem) for p in sorted((SPEC_DIR / "schemas").glob("*.yaml"))}
    # inputValueNoObject's oneOf lists a string twice (string, and binaryInputValue: a string of format byte, which
    # validators need not check) and an integer twice (number, integer): no string or integer value could match
    # it once, so no inline result would be valid. anyOf, as the standard means it (a value is one of these).
    fixed = found["ogc_inputValueNoObject"]
    fixed["anyOf"] = fixed.pop("oneOf")
    return found


def register_schemas(api) -> None:
    for name, schema in schemas().items():
        api.spec.components.schema(name, copy.deepcopy(schema))


BINARY = {"description": "The output's bytes, of its media type", "content": {
    "*/*": {"schema": {"type": "string", "format": "binary"}}}}


def _response(name: str | dict[str, Any] | None) -> dict[str, Any]:
    if isinstance(name, dict):
        return name
    if name is None:
        return {"description": "The OpenAPI 3.0 document", "content": {
            "application/vnd.oai.openapi+json;version=3.0": {"schema": {"type": "object"}}}}
    response = _load("responses", name)
    content = response.setdefault("content", {})
    if "/*" in content:                     # ExecuteSync's media range, as the standard meant it
        content["*/*"] = content.pop("/*")
    for media in content.values():
        # ExecuteSync's oneOf lists an object twice (an object, and results) and a number twice (number,
        # integer): no results document could match it once. anyOf, as the standard means it.
        schema = media.get("schema") or {}
        if name == "ExecuteSync" and "oneOf" in schema:
            schema["anyOf"] = schema.pop("oneOf")
    content.setdefault("text/html", {"schema": {"type": "string"}})
    return response


def _errors(*codes: int) -> dict[str, Any]:
    exc = {"description": "An OGC exception (RFC 7807) naming the problem", "content": {
        "application/json": {"schema": {"$ref": S + "ogc_exception"}}, "text/html": {"schema": {"type": "string"}}}}
    return {**{str(c): exc for c in codes}, "default": exc}


F_PARAM = {"name": "f", "in": "query", "required": False, "description": "json or html (else the Accept header)",
           "schema": {"type": "string", "enum": ["json", "html"]}}


def _parameter(name: str) -> dict[str, Any]:
    """A query parameter of the standard, narrowed to what this server takes (status.py checks the same)."""
    from .status import DATETIME_PARAM, DURATION_MAX

    if name == "page_token":
        return {"name": "page_token", "in": "query", "required": False, "schema": {"type": "string"},
                "description": "the token of the job list's next link (opaque: '' or one this server gave)"}
    param = _load("parameters", name)
    param["name"] = param["name"].strip()
    if name == "datetime":
        param["schema"] = {"type": "string", "pattern": DATETIME_PARAM, "description": "an RFC 3339 date-time, "
                           "or an interval start/end whose open ends are '..' or empty"}
    elif name in ("minDuration", "maxDuration"):
        param["schema"]["items"] = {"type": "integer", "minimum": 0, "maximum": DURATION_MAX}
        param["description"] = "whole seconds of running; given more than once, every value must hold"
    return param


def op(summary: str, response: str | dict[str, Any] | None, path: list[str] | tuple[str, ...] = (),
       query: list[str] | tuple[str, ...] = (), ok: int = 200, errors: tuple[int, ...] = (400,)) -> dict[str, Any]:
    """blp.doc() arguments of one operation (flask-smorest documents the path's own parameters)."""
    params = [_parameter(q) for q in query]
    return {"summary": summary, "parameters": [*params, F_PARAM],
            "responses": {str(ok): _response(response), **_errors(*errors, *((404,) if path else ()))}}


# What an execute request's parts must be, as execute.py checks them (the patterns are the ones it matches).
UUID = "[0-9a-f]{32}"
_PORT = "(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
#: An href to a file: an uploaded file's uuid, or an http(s) URL naming a host (IPv6 literals are not taken).
HREF_RE = f"^(?:{UUID}|[Hh][Tt][Tt][Pp][Ss]?://[^\\s/?#@:\\[\\]]+(?::{_PORT})?(?:[/?#]\\S*)?)$"
#: Base64 as base64.b64decode(validate=True) takes it, not empty (an empty file is refused): whole quads, the last
#: one maybe padded.
BASE64_RE = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"
#: A subscriber URL: http(s), a host by name or IPv4 address, a port in range, no credentials, spaces or control
#: characters. A literal address the egress rules refuse (loopback, private... unless EGRESS_ALLOWED_NETWORKS lists
#: it) is a 400 too: that is configuration, which no pattern here says.
SUBSCRIBER_RE = f"^[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9-]+\\.)*[A-Za-z0-9-]+(?::{_PORT})?(?:[/?#][!-~]*)?$"
NO_NUL = "^[^\\u0000]*$"
INT64 = 2**63 - 1
_ANY: dict[str, Any] = {}


def _literal(opt: Any) -> dict[str, Any]:
    """A literal input's value as apps._coerce takes it (null: not given)."""
    from ..apps import MAX_STRING

    schema: dict[str, Any]
    if opt.type == "bool":
        schema = {"type": "boolean"}
    elif opt.type in ("int", "float"):
        schema = {"type": "integer" if opt.type == "int" else "number"}
        low, high = opt.min, opt.max
        if opt.type == "int":
            low = -INT64 if low is None else max(low, -INT64)
            high = INT64 if high is None else min(high, INT64)
        if low is not None:
            schema["minimum"] = low
        if high is not None:
            schema["maximum"] = high
    else:
        schema = {"type": "string", "maxLength": MAX_STRING, "pattern": NO_NUL}
        if opt.pattern:
            schema = {**schema, "allOf": [{"pattern": f"^(?:{opt.pattern})$"}]}
    if opt.allowed is not None:
        schema["enum"] = list(opt.allowed)
    return schema


def _file_input(opt: Any, media_type: str) -> dict[str, Any]:
    from ..apps import MAX_STRING

    link = {"type": "object", "required": ["href"], "additionalProperties": False, "properties": {
        "href": {"type": "string", "maxLength": MAX_STRING, "pattern": HREF_RE,
                 "description": "an uploaded file's uuid (or its /download-id URL here), or an http(s) URL "
                                "fetched now under the egress rules"},
        **{k: {"type": "string"} for k in ("type", "rel", "title", "hreflang")}}}
    inline = {"type": "object", "required": ["value"], "additionalProperties": False, "properties": {
        "value": {"type": "string", "minLength": 1},
        "encoding": {"type": "string", "enum": ["base64", "utf-8", "utf8"]}, "mediaType": {"type": "string"},
        "schema": _ANY},
        "description": f"the file itself, up to OGC_INLINE_MAX_BYTES decoded (413 above); {media_type}",
        "anyOf": [{"required": ["encoding"], "properties": {"encoding": {"enum": ["base64"]},
                                                            "value": {"pattern": BASE64_RE}}},
                  {"properties": {"encoding": {"enum": ["utf-8", "utf8"]}}}]}
    name = {"type": "string", "minLength": 1, "maxLength": MAX_STRING, "pattern": NO_NUL,
            "description": "an uploaded file's uuid, or its path under your data directory"}
    return {"anyOf": [name, link, inline]}


def input_value(opt: Any) -> dict[str, Any]:
    """One input of an execute request: a file by name, href or inline; a literal bare or as {"value": ...}."""
    if opt.type == "file":
        schema = _file_input(opt, opt.media_type or "application/octet-stream")
    else:
        bare = {**_literal(opt), "nullable": not opt.required}
        qualified = {"type": "object", "required": ["value"], "additionalProperties": False, "properties": {
            "value": bare, "mediaType": _ANY, "encoding": _ANY, "schema": _ANY}}
        schema = {"anyOf": [bare, qualified]}
    text = opt.help or opt.name
    if opt.no_effect:
        text = f"accepted, with no effect: {opt.no_effect}"
    return {**schema, "description": text, **({"deprecated": True} if opt.no_effect else {})}


def execute_schema(app: Any) -> dict[str, Any]:
    """The execute request of one process, exactly as execute.parse and the app kind take it."""
    from .processes import outputs

    props = {name: input_value(opt) for name, opt in app.options.items()}
    required = [name for name, opt in app.options.items() if opt.required]
    inputs: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        inputs["required"] = required
    outs = {ident: {"type": "object", "additionalProperties": False, "properties": {
        "transmissionMode": {"type": "string", "enum": ["value", "reference"]},
        "format": {"type": "object", "nullable": True, "additionalProperties": False, "properties": {
            "mediaType": {"type": "string", "enum": [out.media_type]}, "encoding": {"type": "string"},
            "schema": _ANY}}}}
        for ident, out in outputs(app).items()}
    from ..notify import URL_MAX

    url = {"type": "string", "maxLength": URL_MAX, "pattern": SUBSCRIBER_RE}
    body: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": {
        "inputs": inputs,
        "outputs": {"type": "object", "nullable": True, "minProperties": 1, "additionalProperties": False,
                    "properties": outs, "description": "null or left out: every output"},
        "response": {"type": "string", "enum": ["raw", "document"]},
        "subscriber": {"type": "object", "nullable": True, "additionalProperties": False,
                       "properties": dict.fromkeys(("successUri", "inProgressUri", "failedUri"), url)}}}
    if required:
        body["required"] = ["inputs"]
    return body


def results_op() -> dict[str, Any]:
    """GET /jobs/{id}/results: the results document; raw (as the execute request asked): one output's bytes, a
    multipart/related of several, or 204 with Link headers when every output is by reference."""
    doc = op("A job's results: a document, or raw as the execute request asked", "Results", path=["jobId"],
             errors=(500,))
    doc["responses"]["200"]["content"]["*/*"] = {"schema": {"type": "string", "format": "binary"}}
    doc["responses"]["200"]["headers"] = {"Link": {"schema": {"type": "string"},
                                                   "description": "the job's status (rel monitor)"}}
    doc["responses"]["204"] = _response("ExecuteSyncRawRef")
    return doc


def api_op() -> dict[str, Any]:
    doc = op("The OpenAPI 3.0 document of this surface (also part of /openapi.json)", None)
    doc["responses"]["302"] = {"description": "f=html: to the API documentation (Swagger UI)", "headers": {
        "Location": {"schema": {"type": "string"}, "description": "the Swagger UI page"}}}
    return doc


RESPONSE_PARAM = {"name": "response", "in": "query", "required": False, "description": "raw or document (the "
                  "execute request's 'response' comes first)", "schema": {"type": "string", "enum": ["raw",
                                                                                                   "document"]}}


def execute_op(app: Any) -> dict[str, Any]:
    """The POST operation of one process's execution path (each process has its own, with its own inputs)."""
    doc = op(f"Execute {app.name}: an app job (async: 201 and its status; sync: its results)", "ExecuteSync",
             errors=(400, 404, 413, 415, 429, 500))
    doc["tags"] = ["ogc"]
    doc["requestBody"] = {"required": True, "content": {"application/json": {"schema": execute_schema(app)}}}
    doc["parameters"] += [RESPONSE_PARAM,
                          {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
                           "description": "respond-async for an asynchronous execution"}]
    doc["responses"]["201"] = _response("ExecuteAsync")
    doc["responses"]["204"] = _response("ExecuteSyncRawRef")
    return doc


def surface(spec: dict[str, Any], root: str, version: str) -> dict[str, Any]:
    """The part of the whole document that is OGC API - Processes."""
    paths = {p[len(PREFIX):] or "/": v for p, v in spec.get("paths", {}).items()
             if p == PREFIX or p.startswith(PREFIX + "/")}
    return {"openapi": spec.get("openapi", "3.0.3"),
            "info": {"title": "caesar-rest: OGC API - Processes 1.0", "version": version,
                     "description": "The registered apps as OGC API - Processes; schemas from the OGC standard "
                                    "(OGC licence)."},
            "servers": [{"url": root + PREFIX}], "paths": paths, "components": spec.get("components", {})}
