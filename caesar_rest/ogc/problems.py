"""Every error under /ogcapi as an OGC exception (RFC 7807: type, title, status, detail), rendered from the body the
one error mapping (caesar_rest/errors.py) builds; the extra fields that name the culprit (input, parameter...) stay.
The types the standard defines are its URIs; the others name caesar-rest's error code."""
from __future__ import annotations

from typing import Any

from flask import Response, json, render_template, request

from ..errors import NotFound

EXC = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"
NO_SUCH_PROCESS = EXC + "no-such-process"
NO_SUCH_JOB = EXC + "no-such-job"
RESULT_NOT_READY = EXC + "result-not-ready"
NOT_CAESAR = "urn:caesar-rest:error:"          # + the error code of caesar_rest/errors.py (bad_request, ...)


def no_such_job(job_id: str) -> NotFound:
    return NotFound(f"There is no job {job_id} of yours", type=NO_SUCH_JOB, jobID=job_id)


def no_such_process(name: str) -> NotFound:
    return NotFound(f"There is no process {name!r}; GET /ogcapi/processes lists them", type=NO_SUCH_PROCESS,
                    processID=name)


def exception_of(body: dict[str, Any]) -> dict[str, Any]:
    details = {k: v for k, v in body.items() if k not in ("code", "error", "status", "message", "type")}
    if "option" in details:                 # an app option is an OGC input
        details.setdefault("input", details.pop("option"))
    return {"type": body.get("type") or NOT_CAESAR + str(body["error"]),
            "title": str(body["error"]).replace("_", " ").capitalize(), "status": body["code"],
            "detail": body["message"], "instance": request.path, **details}


def render(body: dict[str, Any]) -> Response:
    doc = exception_of(body)
    html = request.args.get("f") == "html" or (
        request.args.get("f") is None
        and request.accept_mimetypes["text/html"] > request.accept_mimetypes["application/json"])
    if html:
        return Response(render_template("ogc/exception.html", doc=doc), status=doc["status"], mimetype="text/html")
    return Response(json.dumps(doc), status=doc["status"], mimetype="application/json")
