"""The TES v1.1 OpenAPI schemas as strict JSON Schemas: every object rejects properties the spec does not
define (additionalProperties false), as strict clients such as py-tes do."""
from __future__ import annotations

import copy
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPECS = Path(__file__).resolve().parents[2] / "caesar_rest" / "specs"
SERVICE_INFO_URL = ("https://raw.githubusercontent.com/ga4gh-discovery/ga4gh-service-info/v1.0.0/"
                    "service-info.yaml#/components/schemas/")
OPENAPI_ONLY = ("readOnly", "example", "discriminator", "xml", "externalDocs", "deprecated", "description")


@lru_cache(maxsize=1)
def _documents() -> tuple[dict[str, Any], dict[str, Any]]:
    tes = yaml.safe_load((SPECS / "tes-v1.1.openapi.yaml").read_text())["components"]["schemas"]
    info = yaml.safe_load((SPECS / "ga4gh-service-info-1.0.0.yaml").read_text())["components"]["schemas"]
    return tes, info


@cache
def _view_documents(view: str) -> dict[str, Any]:
    """The TES schemas as the view parameter defines them: MINIMAL holds only id and state; BASIC all but
    ExecutorLog.stdout/stderr, Input.content and TaskLog.system_logs."""
    tes = copy.deepcopy(_documents()[0])
    if view == "MINIMAL":
        props = tes["tesTask"]["properties"]
        tes["tesTask"] = {"type": "object", "required": ["id", "state"],
                          "properties": {"id": props["id"], "state": props["state"]}}
    elif view == "BASIC":
        for schema_name, prop in (("tesExecutorLog", "stdout"), ("tesExecutorLog", "stderr"),
                                  ("tesInput", "content"), ("tesTaskLog", "system_logs")):
            del tes[schema_name]["properties"][prop]
    return tes


def _resolve(ref: str, local: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    _tes, info = _documents()
    if ref.startswith(SERVICE_INFO_URL):
        return info[ref[len(SERVICE_INFO_URL):]], info
    if ref.startswith("#/components/schemas/"):
        return local[ref.rsplit("/", 1)[1]], local
    raise ValueError(f"unresolvable $ref {ref}")


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """allOf of two object schemas as one schema (properties of both, each merged where they overlap)."""
    out = {k: v for k, v in a.items() if k not in ("properties", "required")}
    out.update({k: v for k, v in b.items() if k not in ("properties", "required")})
    props = dict(a.get("properties") or {})
    for name, schema in (b.get("properties") or {}).items():
        props[name] = _merge(props[name], schema) if name in props else schema
    if props:
        out["properties"] = props
    required = sorted(set(a.get("required") or []) | set(b.get("required") or []))
    if required:
        out["required"] = required
    return out


def _strict(schema: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        target, doc = _resolve(schema["$ref"], local)
        return _strict(target, doc)
    schema = {k: copy.deepcopy(v) for k, v in schema.items() if k not in OPENAPI_ONLY}
    if "allOf" in schema:
        parts = [_strict(part, local) for part in schema.pop("allOf")]
        merged: dict[str, Any] = {}
        for part in parts:
            merged = _merge(merged, part)
        schema = _merge(merged, schema)
        schema.pop("additionalProperties", None)
    if "properties" in schema:
        schema["properties"] = {name: _strict(sub, local) for name, sub in schema["properties"].items()}
    if "items" in schema:
        schema["items"] = _strict(schema["items"], local)
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _strict(schema["additionalProperties"], local)
    if schema.get("type") == "object" or "properties" in schema:
        schema.setdefault("type", "object")
        schema.setdefault("additionalProperties", False)
    return schema


@cache
def strict_schema(name: str, view: str = "FULL") -> dict[str, Any]:
    tes = _view_documents(view)
    return _strict(tes[name], tes)


def validate(name: str, body: Any, view: str = "FULL") -> None:
    """Raise jsonschema.ValidationError unless body is a valid `name` (e.g. tesTask) in that view, with no
    field the spec does not define."""
    jsonschema.validate(body, strict_schema(name, view), format_checker=jsonschema.FormatChecker())


def schema_for(method: str, path: str) -> str | None:
    """The response schema of a TES operation, from the request's method and path."""
    tail = path.rstrip("/").split("/")[-1]
    if path.endswith("/service-info"):
        return "tesServiceInfo"
    if method == "POST" and tail == "tasks":
        return "tesCreateTaskResponse"
    if method == "GET" and tail == "tasks":
        return "tesListTasksResponse"
    if method == "POST" and tail.endswith(":cancel"):
        return "tesCancelTaskResponse"
    if method == "GET" and "/tasks/" in path:
        return "tesTask"
    return None
