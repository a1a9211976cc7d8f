"""Schemathesis over every /ogcapi operation from /openapi.json, with every check (`--checks all`): the landing page,
conformance, the API document, processes, each process's execution (sync and async: the jobs are made and stay
queued, no worker runs here), the job list, a job's status, results and outputs, and dismiss. The one refusal of a
schema-valid request that stays (it depends on this server's state, not on the request) is named at _not_here."""
from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.openapi.checks import RejectedPositiveData

from caesar_rest import create_app, egress

from ..support import embedded_settings, write_apps
from .ogc_support import refused_subscriber

#: A process that may run synchronously (its time limit, DEFAULT_TIME_LIMIT, fits OGC_SYNC_WAIT): with no worker its
#: sync executions wait OGC_SYNC_WAIT (0.2 s) and are answered as asynchronous ones (201), as a job that did not end
#: in time is.
QUICK = """
name: quick
version: "1.0"
command: [caesar-sleeper]
backends: [local]
outputs: [sleeper.txt]
options:
  seconds: {type: float, default: 0, min: 0, max: 1}
  message: {type: string, default: hi}
"""
EXECUTION = re.compile(r"^/ogcapi/processes/([^/]+)/execution$")

# Built at import: schemathesis parametrizes at collection time.
_ROOT = Path(tempfile.mkdtemp(prefix="caesar-ogc-fuzz-"))
atexit.register(shutil.rmtree, _ROOT, True)
fuzz_app = create_app(embedded_settings(_ROOT / "var", OGC_SYNC_WAIT=0.2, DEFAULT_TIME_LIMIT=0.2,
                                        APPS_DIR=str(write_apps(_ROOT / "apps", {"quick": QUICK}))))
REGISTRY = fuzz_app.extensions["caesar_registry"]
RULES = egress.Rules.from_settings(fuzz_app.config)
load_all_checks()
ALL_CHECKS = CHECKS.get_all()
schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app, config=SchemathesisConfig.from_dict({
    "generation": {"mode": "all"},
    # An opaque token is one the server gave out: none can be generated ('' is no token).
    "parameters": {"query.page_token": ""}})).include(path_regex="^/ogcapi")


def _file_inputs(case: Any) -> dict[str, Any]:
    """The file inputs of an execution's body: name -> value."""
    found = EXECUTION.match(case.operation.path)
    app = REGISTRY.get(found.group(1)) if found else None
    inputs = case.body.get("inputs") if isinstance(case.body, dict) else None
    if app is None or not isinstance(inputs, dict):
        return {}
    return {k: v for k, v in inputs.items() if k in app.options and app.options[k].type == "file"}


@schema.hook("map_body")
def _hrefs_stay_here(ctx, body: Any) -> Any:
    """An http(s) href input is fetched when the job is submitted: its host becomes 127.0.0.1, which the egress
    rules refuse (a 400 naming the input) before any connection, so the fuzz never reaches the network; the rest
    of the URL, valid or not, stays as generated."""
    inputs = body.get("inputs") if isinstance(body, dict) else None
    for value in inputs.values() if isinstance(inputs, dict) else ():
        href = value.get("href") if isinstance(value, dict) else None
        if isinstance(href, str):
            value["href"] = re.sub(r"^([Hh][Tt][Tt][Pp][Ss]?://)[^/?#]*", r"\g<1>127.0.0.1", href)
    return body


@schema.hook("filter_failure")
def _not_here(_ctx, failure, case, response) -> bool:
    """Drop (False) one failure alone: positive_data_acceptance on an execution refused with a 400 that names a
    file input given by name or href, or a subscriber URL whose literal address the egress rules refuse. Which
    files a caller has uploaded, and which addresses this server may reach (EGRESS_ALLOWED_NETWORKS; here: no
    loopback or private one, and no href is fetched), are its state and configuration, not the request's shape:
    no document can say them. An inline file, and every other failure of every check, stays."""
    if not (isinstance(failure, RejectedPositiveData) and response.status_code == 400):
        return True
    if refused_subscriber(case.body, RULES) and "is refused" in response.text:
        return False
    files = _file_inputs(case)
    if (response.headers.get("content-type") or [""])[0].startswith("application/json"):
        named = response.json().get("input")
    else:       # ?f=html: the page's detail names the input ('inputfile', HTML-escaped)
        named = next((k for k in files if f"&#39;{k}&#39;" in response.text), None)
    value = files.get(named) if isinstance(named, str) else None
    return not (isinstance(value, str) or (isinstance(value, dict) and "href" in value))


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_ogc_conforms_to_the_document(case):
    case.call_and_validate(checks=ALL_CHECKS)


# The job routes once more, on a real job (above, a generated id is a 404): its status, its results and outputs
# (not ready: it is queued, then dismissed) and dismiss, which cancels it at once (it has not started).
_made = fuzz_app.test_client().post("/ogcapi/processes/sleeper/execution", json={"inputs": {"seconds": 0}},
                                    headers={"Prefer": "respond-async"})
assert _made.status_code == 201, _made.get_data(as_text=True)
job_schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app, config=SchemathesisConfig.from_dict({
    "generation": {"mode": "all"},
    "parameters": {"path.job_id": _made.get_json()["jobID"]}})).include(path_regex="^/ogcapi/jobs/")


@job_schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_ogc_job_routes_conform_on_a_real_job(case):
    case.call_and_validate(checks=ALL_CHECKS)
