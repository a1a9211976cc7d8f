"""The OpenAPI document states what the validators check, from the same definitions: id patterns, integer ranges,
the errors each operation gives; and the service refuses what the document refuses at its edges."""
from __future__ import annotations

import re

from caesar_rest.api import jobs as jobs_api, tes as tes_api
from caesar_rest.jobs import JOB_ID_RE, UUID_HEX_RE

V1 = "/caesar/api/v1.0"


def _doc(client):
    return client.get("/openapi.json").get_json()


def test_ids_are_documented_with_the_patterns_the_code_checks(standin_client):
    paths = _doc(standin_client)["paths"]
    for path, item in paths.items():
        for param in item.get("parameters", []):
            if param["name"] == "job_id" and path.startswith(V1):
                assert param["schema"]["pattern"] == JOB_ID_RE.pattern, path
            if param["name"] == "file_id":
                assert param["schema"]["pattern"] == UUID_HEX_RE.pattern, path
    assert re.fullmatch(JOB_ID_RE.pattern, "69ca62d7-5098-4fe7-a675-63895a2d06b1")


def test_integer_ranges_are_the_ones_enforced(standin_client):
    ops = _doc(standin_client)["paths"]
    listed = {p["name"]: p["schema"] for p in ops[V1 + "/jobs"]["get"]["parameters"]}
    assert listed["per_page"] == {"type": "integer", "minimum": jobs_api.PER_PAGE.low,
                                  "maximum": jobs_api.PER_PAGE.high}
    tasks = {p["name"]: p["schema"] for p in ops["/ga4gh/tes/v1/tasks"]["get"]["parameters"]}
    assert (tasks["page_size"]["minimum"], tasks["page_size"]["maximum"]) == (1, tes_api.PAGE_SIZE.high)
    for bad in ("0", str(jobs_api.PER_PAGE.high + 1)):
        r = standin_client.get(f"{V1}/jobs?per_page={bad}")
        assert r.status_code == 400 and r.get_json()["parameter"] == "per_page"
    r = standin_client.get("/ga4gh/tes/v1/tasks?page_size=0")
    assert r.status_code == 400 and "page_size" in r.get_json()["message"]


def test_each_operation_lists_the_errors_its_checks_give(standin_client):
    ops = _doc(standin_client)["paths"]
    assert {"400", "404", "413", "415", "429", "503"} <= set(ops[V1 + "/job"]["post"]["responses"])
    assert {"400", "411", "413", "415", "507"} <= set(ops[V1 + "/upload"]["post"]["responses"])
    assert {"400", "404", "409"} <= set(ops[V1 + "/job/{job_id}/output"]["get"]["responses"])
    error = ops[V1 + "/job/{job_id}/status"]["get"]["responses"]["404"]
    assert error["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ApiError"}


def test_empty_app_is_refused_as_documented(standin_client):
    body = _doc(standin_client)["paths"][V1 + "/job"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["app"]["minLength"] == 1
    r = standin_client.post(V1 + "/job", json={"app": ""})
    assert r.status_code == 400 and r.get_json()["field"] == "app"


def test_cancel_route_allows_only_post(standin_client):
    r = standin_client.open("/ga4gh/tes/v1/tasks/x:cancel", method="OPTIONS")
    assert set(r.headers["Allow"].replace(" ", "").split(",")) == {"POST", "OPTIONS"}
    assert standin_client.get("/ga4gh/tes/v1/tasks/x:cancel").status_code == 405

