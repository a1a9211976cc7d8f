"""OpenAPI descriptions of the caesar-rest v1.0 responses, so the document promises exactly what the API sends
(the fuzz test holds the API to it)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..jobs import JOB_ID_RE, UUID_HEX_RE
from .common import int_arg

S = "#/components/schemas/"

NULLABLE_STR = {"type": "string", "nullable": True}

SCHEMAS: dict[str, dict[str, Any]] = {
    "ApiError": {"type": "object", "required": ["code", "error", "status", "message"], "properties": {
        "code": {"type": "integer"}, "error": {"type": "string"},
        "status": {"type": "string", "description": "The message (the original caesar-rest's key)"},
        "message": {"type": "string"}}, "additionalProperties": True},
    "File": {"type": "object", "required": ["uuid", "filename_orig", "format", "size", "size_bytes", "sha256", "date",
                                            "path"], "properties": {
        "uuid": {"type": "string"}, "filename_orig": {"type": "string"}, "format": {"type": "string"},
        "size": {"type": "number", "description": "MB"}, "size_bytes": {"type": "integer"},
        "sha256": {"type": "string"}, "date": {"type": "string"}, "path": {"type": "string"}, "tag": NULLABLE_STR,
        "owner": {"type": "string"}, "status": {"type": "string"}}, "additionalProperties": True},
    "Upload": {"type": "object", "required": ["id", "filename", "format", "length", "offset", "created", "complete",
                                              "url", "file"], "properties": {
        "id": {"type": "string"}, "filename": {"type": "string"}, "format": {"type": "string"}, "tag": NULLABLE_STR,
        "length": {"type": "integer"}, "offset": {"type": "integer"}, "created": {"type": "string"},
        "expires": NULLABLE_STR, "complete": {"type": "boolean"}, "url": {"type": "string"},
        "file": {"allOf": [{"$ref": "#/components/schemas/File"}], "nullable": True}}},
    "Deleted": {"type": "object", "required": ["uuid", "status"], "properties": {
        "uuid": {"type": "string"}, "status": {"type": "string"}}},
    "AppSummary": {"type": "object", "required": ["name", "version", "description", "backends", "default_backend"],
                   "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                  "description": {"type": "string"},
                                  "backends": {"type": "array", "items": {"type": "string"}},
                                  "default_backend": {"type": "string"}}, "additionalProperties": True},
    "Apps": {"type": "object", "required": ["apps"], "properties": {
        "apps": {"type": "array", "items": {"$ref": S + "AppSummary"}}}},
    "AppDescription": {"allOf": [{"$ref": S + "AppSummary"}, {"type": "object", "required": ["options", "resources"],
                                                               "properties": {
        "command": {"type": "array", "items": {"type": "string"}}, "image": NULLABLE_STR,
        "resources": {"type": "object"}, "outputs": {"type": "array", "items": {"type": "string"}},
        "options": {"type": "array",
                    "items": {"type": "object", "required": ["name", "type", "required", "effect", "mandatory",
                                                             "default", "enum", "min", "max", "category",
                                                             "subcategory", "advanced"], "properties": {
                        "mandatory": {"type": "boolean", "description": "required (upstream's name)"},
                        "enum": {"type": "array", "nullable": True, "items": {},
                                 "description": "the allowed values, or null"},
                        "min": {"type": "number", "nullable": True}, "max": {"type": "number", "nullable": True},
                        "category": {"type": "string"}, "subcategory": NULLABLE_STR,
                        "advanced": {"type": "boolean"}}}}}}]},
    "JobSummary": {"type": "object", "required": ["job_id", "app", "job_inputs", "submit_date", "state", "status"],
                   "properties": {
        "job_id": {"type": "string"}, "app": {"type": "string"}, "job_inputs": {"type": "object"},
        "submit_date": {"type": "string"}, "state": {"type": "string"}, "status": {"type": "string"},
        "tag": NULLABLE_STR, "backend": {"type": "string"}, "end_date": NULLABLE_STR}},
    "JobList": {"type": "object",
                "required": ["jobs", "page", "per_page", "total", "pages", "has_next", "next_page_token"],
                "properties": {
        "jobs": {"type": "array", "items": {"$ref": S + "JobSummary"}},
        "page": {"type": "integer", "nullable": True, "description": "null for a page asked by page_token"},
        "per_page": {"type": "integer"}, "has_next": {"type": "boolean"},
        "next_page_token": {"type": "string", "nullable": True,
                            "description": "pass as page_token for the next page; null on the last"},
        "total": {"type": "integer", "nullable": True, "description": "null when more than total_exceeds jobs match"},
        "pages": {"type": "integer", "nullable": True},
        "total_exceeds": {"type": "integer", "description": "present when the count stopped at JOBS_COUNT_LIMIT"}}},
    "JobStatus": {"type": "object", "required": ["job_id", "state", "status", "exit_status", "elapsed_time", "pid"],
                  "properties": {
        "job_id": {"type": "string"}, "state": {"type": "string"}, "status": {"type": "string"},
        "exit_status": {"type": "integer", "nullable": True}, "elapsed_time": NULLABLE_STR, "pid": NULLABLE_STR,
        "cancel_requested": {"type": "boolean"}}},
    "JobLogs": {"type": "object", "required": ["job_id", "state", "stdout", "stderr"], "properties": {
        "job_id": {"type": "string"}, "state": {"type": "string"}, "stdout": {"type": "string"},
        "stderr": {"type": "string"}}},
    "JobMetadata": {"type": "object", "required": ["job_id", "app", "app_version", "job_inputs", "argv", "backend",
                                                   "state", "timings", "inputs", "events"], "properties": {
        "job_id": {"type": "string"}, "app": {"type": "string"}, "app_version": {"type": "string"},
        "job_inputs": {"type": "object"}, "argv": {"type": "array", "items": {"type": "string"}},
        "backend": {"type": "string"}, "host": NULLABLE_STR, "state": {"type": "string"},
        "exit_status": {"type": "integer", "nullable": True}, "timings": {"type": "object"},
        "inputs": {"type": "array", "items": {"type": "object"}},
        "events": {"type": "array", "items": {"type": "object"}},
        "retries": {"type": "object", "description": "policy ({max, on} or null) and previous_attempts: each "
                                                     "earlier attempt's reason, times, host and status"},
        "kept_remote": {"type": "object", "nullable": True,
                        "description": "the backend and handle of a copy kept because its outputs could not be "
                                       "fetched (caesar-rest job refetch)"}},
        "additionalProperties": True},
    "NotifyRequest": {"type": "object", "required": ["url"], "additionalProperties": False, "properties": {
        "url": {"type": "string", "description": "http(s) URL the job's state changes are POSTed to"},
        "events": {"type": "array", "items": {"type": "string",
                                              "enum": ["started", "finished", "succeeded", "failed", "changed"]},
                   "description": "default: started, finished"},
        "format": {"type": "string", "description": "payload format: caesar (default), tes, or another registered"}}},
    "NotifyAttempt": {"type": "object", "required": ["at", "http_status", "error", "next_try"], "properties": {
        "at": {"type": "string"}, "http_status": {"type": "integer", "nullable": True},
        "error": NULLABLE_STR, "duration_ms": {"type": "number", "nullable": True},
        "next_try": {"type": "string", "nullable": True, "description": "null: no more tries"}}},
    "NotifyDelivery": {"type": "object", "required": ["id", "event", "job_state", "state", "attempts"],
                       "properties": {
        "id": {"type": "integer"}, "event": {"type": "string"}, "job_state": {"type": "string"},
        "state": {"type": "string", "enum": ["pending", "delivered", "failed"]}, "created": {"type": "string"},
        "next_try": NULLABLE_STR, "done": NULLABLE_STR,
        "attempts": {"type": "array", "items": {"$ref": S + "NotifyAttempt"}}}},
    "JobNotifications": {"type": "object", "required": ["job_id", "state", "subscriptions"], "properties": {
        "job_id": {"type": "string"}, "state": {"type": "string"},
        "subscriptions": {"type": "array", "items": {"type": "object",
                                                     "required": ["id", "url", "events", "format", "deliveries"],
                                                     "properties": {
            "id": {"type": "string"}, "url": {"type": "string"},
            "events": {"type": "array", "items": {"type": "string"}}, "format": {"type": "string"},
            "created": {"type": "string"},
            "deliveries": {"type": "array", "items": {"$ref": S + "NotifyDelivery"}}}}}}},
}


def register(api) -> None:
    for name, schema in SCHEMAS.items():
        api.spec.components.schema(name, schema)


def json_response(schema: str | dict, description: str) -> dict[str, Any]:
    body = {"$ref": S + schema} if isinstance(schema, str) else schema
    return {"description": description, "content": {"application/json": {"schema": body}}}


ERRORS = {"default": json_response("ApiError", "An error, with a message naming the problem")}
# The errors an operation gives by its own checks, each the ApiError body (any operation may also answer 401/403
# when authentication is on, and 503 when the database is down: the default response).
ERROR_TEXT = {
    400: "Bad request: the message (and field, option or parameter) names what is wrong",
    404: "No such resource of yours",
    409: "The resource's state does not allow it (yet)",
    411: "No length given for a body this server must size",
    412: "A header the protocol requires first is missing or wrong (tus: Tus-Resumable)",
    413: "The body is larger than this server accepts",
    415: "A content type or file format this operation does not take",
    429: "You have as many active jobs as allowed",
    503: "A service it needs (broker, backend) is unavailable",
    507: "Your storage quota would be exceeded",
}


def errors(*codes: int) -> dict[str, Any]:
    return {str(c): json_response("ApiError", ERROR_TEXT[c]) for c in codes}


def responses(code: int, schema: str | dict, description: str, fails: tuple[int, ...] = ()) -> dict[str, Any]:
    """A success response, the errors the operation's checks give (fails), and the default error shape."""
    return {str(code): json_response(schema, description), **errors(*fails), **ERRORS}


def binary(code: int, mimetype: str, description: str, fails: tuple[int, ...] = ()) -> dict[str, Any]:
    return {str(code): {"description": description, "content": {mimetype: {"schema": {"type": "string",
                                                                                      "format": "binary"}}}},
            **errors(*fails), **ERRORS}


def query(*params: tuple[str, str, str]) -> list[dict[str, Any]]:
    """Query parameters as (name, type, description)."""
    return [{"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d}
            for n, t, d in params]


def path_param(name: str, pattern: str, description: str) -> dict[str, Any]:
    """A path parameter with the pattern the code checks it against (the regex itself, so both agree)."""
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": pattern}}


JOB_ID = path_param("job_id", JOB_ID_RE.pattern, "the job's id, a UUID")
FILE_ID = path_param("file_id", UUID_HEX_RE.pattern, "the file's uuid, 32 lower-case hex digits")


@dataclass(frozen=True)
class IntQuery:
    """An integer query parameter: its range is documented and enforced from this one definition."""
    name: str
    low: int
    high: int
    description: str

    def doc(self) -> dict[str, Any]:
        return {"name": self.name, "in": "query", "required": False, "description": self.description,
                "schema": {"type": "integer", "minimum": self.low, "maximum": self.high}}

    def read(self, default: int, key: str = "parameter") -> int:
        """The value of the current request (caesar_rest.numbers' checks and messages), or default when absent."""
        return int_arg(self.name, default, self.low, self.high, key)


def none_of(words: tuple[str, ...], chars: str = "[^/\\u0000") -> str:
    """A regex, without lookahead (which schema-driven generators lack), for a non-empty run of characters of the
    class `chars + "]"` that is none of words and does not start with '.': a schema's "not a reserved name"."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for c in word:
            node = node.setdefault(c, {})
        node[""] = {}

    def neg(node: dict[str, Any], depth: int) -> str:
        kids = sorted(k for k in node if k)
        other = chars + "".join(re.escape(k) for k in kids) + ("." if depth == 0 else "") + "]"
        alts = [f"{other}{chars}]*"]                       # leaves every word at this character
        if depth > 0 and "" not in node:
            alts.append("")                                # a proper prefix of a word, ended here
        alts += [re.escape(k) + neg(node[k], depth + 1) for k in kids]
        return "(?:" + "|".join(alts) + ")"

    return neg(trie, 0)
