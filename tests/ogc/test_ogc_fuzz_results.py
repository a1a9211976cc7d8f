"""Schemathesis, every check, where a real worker runs the jobs: the results routes of finished jobs (the results of
a job executed as a document, raw with one output by value (its bytes), raw with several (multipart/related) and raw
by reference (204 and Link headers), and one output's bytes; each job's routes with its id pinned), and synchronous
executions answered with their results (a process that ends at once, within OGC_SYNC_WAIT)."""
from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.openapi.checks import RejectedPositiveData

from caesar_rest import create_app, egress

from ..support import TERMINAL, embedded_settings, start_worker, write_apps
from .ogc_support import refused_subscriber

#: Ends at once (it sleeps 0 s): a synchronous execution is answered with its results.
INSTANT = """
name: instant
version: "1.0"
command: [caesar-sleeper]
backends: [local]
resources: {time_limit: 30}
outputs: [sleeper.txt]
options:
  seconds: {type: float, default: 0, min: 0, max: 0}
  message: {type: string, default: hi}
"""

_ROOT = Path(tempfile.mkdtemp(prefix="caesar-ogc-results-fuzz-"))
atexit.register(shutil.rmtree, _ROOT, True)
SETTINGS = embedded_settings(_ROOT / "var", OGC_SYNC_WAIT=30,
                             APPS_DIR=str(write_apps(_ROOT / "apps", {"instant": INSTANT})))
fuzz_app = create_app(SETTINGS)
load_all_checks()
ALL_CHECKS = CHECKS.get_all()
#: execute request -> what its results are
REQUESTS = {
    "document": {"inputs": {"seconds": 0, "message": "document"}},
    "raw-one": {"inputs": {"seconds": 0, "message": "raw one"}, "response": "raw",
                "outputs": {"sleeper": {"transmissionMode": "value"}}},
    "raw-several": {"inputs": {"seconds": 0, "message": "raw several"}, "response": "raw"},
    "raw-reference": {"inputs": {"seconds": 0}, "response": "raw",
                      "outputs": {"sleeper": {"transmissionMode": "reference"},
                                  "archive": {"transmissionMode": "reference"}}},
}


def _job(body: dict) -> str:
    r = fuzz_app.test_client().post("/ogcapi/processes/sleeper/execution", json=body,
                                    headers={"Prefer": "respond-async"})
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()["jobID"]


# Made at import (schemathesis parametrizes at collection time, the ids pinned in each schema); run by the worker
# the fixture starts.
JOBS = {kind: _job(body) for kind, body in REQUESTS.items()}


def _schema(job_id: str):
    return schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app, config=SchemathesisConfig.from_dict({
        "generation": {"mode": "all"},
        "parameters": {"path.job_id": job_id, "path.output_id": "sleeper"}})).include(
        path_regex="^/ogcapi/jobs/\\{job_id\\}/results")


@pytest.fixture(scope="module")
def finished() -> Iterator[None]:
    worker = start_worker(SETTINGS, ["local"], _ROOT / "worker.log", concurrency=2)
    try:
        client = fuzz_app.test_client()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = {client.get(f"/caesar/api/v1.0/job/{j}/status").get_json()["state"] for j in JOBS.values()}
            if states <= set(TERMINAL):
                break
            time.sleep(0.2)
        assert states == {"SUCCESS"}, (states, worker.log)
        yield
    finally:
        worker.stop()


document = _schema(JOBS["document"])
raw_one = _schema(JOBS["raw-one"])
raw_several = _schema(JOBS["raw-several"])
raw_reference = _schema(JOBS["raw-reference"])
FUZZ = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@document.parametrize()
@FUZZ
def test_results_as_a_document(case, finished):
    case.call_and_validate(checks=ALL_CHECKS)


@raw_one.parametrize()
@FUZZ
def test_raw_results_one_output(case, finished):
    case.call_and_validate(checks=ALL_CHECKS)


@raw_several.parametrize()
@FUZZ
def test_raw_results_several_outputs(case, finished):
    case.call_and_validate(checks=ALL_CHECKS)


@raw_reference.parametrize()
@FUZZ
def test_raw_results_by_reference(case, finished):
    case.call_and_validate(checks=ALL_CHECKS)


# Subscribers are taken (their callbacks would be sent by a control worker: none runs here, so nothing leaves the
# machine).
sync = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app, config=SchemathesisConfig.from_dict({
    "generation": {"mode": "all"}})).include(path_regex="^/ogcapi/processes/instant/execution$")
RULES = egress.Rules.from_settings(fuzz_app.config)


@sync.hook("filter_failure")
def _refused_by_configuration(_ctx, failure, case, response) -> bool:
    """Drop (False) one failure alone: a positive execution refused because a subscriber is a literal address the
    egress rules refuse (configuration: test_ogc_fuzz.py says more)."""
    return not (isinstance(failure, RejectedPositiveData) and response.status_code == 400
                and refused_subscriber(case.body, RULES) and "is refused" in response.text)


@sync.parametrize()
@FUZZ
def test_sync_executions_answer_their_results(case, finished):
    case.call_and_validate(checks=ALL_CHECKS)
