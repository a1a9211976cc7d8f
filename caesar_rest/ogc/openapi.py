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
    return {f"ogc_{p.stem}": _load("schemas", p.stem) for p in sorted((SPEC_DIR / "schemas").glob("*.yaml"))}


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
    content.setdefault("text/html", {"schema": {"type": "string"}})
    return response


def _errors(*codes: int) -> dict[str, Any]:
    exc = {"description": "An OGC exception (RFC 7807) naming the problem", "content": {
        "application/json": {"schema": {"$ref": S + "ogc_exception"}}, "text/html": {"schema": {"type": "string"}}}}
    return {**{str(c): exc for c in codes}, "default": exc}


F_PARAM = {"name": "f", "in": "query", "required": False, "description": "json or html (else the Accept header)",
           "schema": {"type": "string", "enum": ["json", "html"]}}


def op(summary: str, response: str | dict[str, Any] | None, path: list[str] | tuple[str, ...] = (),
       query: list[str] | tuple[str, ...] = (), ok: int = 200, errors: tuple[int, ...] = (400,)) -> dict[str, Any]:
    """blp.doc() arguments of one operation (flask-smorest documents the path's own parameters)."""
    params = [_load("parameters", q) for q in query]
    return {"summary": summary, "parameters": [*params, F_PARAM],
            "responses": {str(ok): _response(response), **_errors(*errors, *((404,) if path else ()))}}


def execute_op() -> dict[str, Any]:
    doc = op("Execute a process: an app job (async: 201 and its status; sync: its results)", "ExecuteSync",
             path=["processID"], errors=(400, 413, 429, 500))
    doc["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": S + "ogc_execute"}}}}
    doc["parameters"].append({"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
                              "description": "respond-async for an asynchronous execution"})
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
