"""Bad job requests: each a 4xx JSON error naming the problem, and nothing created or changed."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from caesar_rest.db import session_scope
from caesar_rest.models import Job, JobEvent

from ..support import API, upload


def job_rows(app) -> int:
    with session_scope(app.config["DATABASE_URL"]) as s:
        return s.query(Job).count() + s.query(JobEvent).count()


@pytest.fixture
def fits(client):
    return upload(client, b"SIMPLE  =                    T", "img.fits")


def post_job(client, **kw):
    return client.post(f"{API}/job", **kw)


@pytest.mark.parametrize("kwargs, status, words", [
    ({"data": "{not json", "content_type": "application/json"}, 400, "not valid JSON"),
    ({"data": "", "content_type": "application/json"}, 400, "empty"),
    ({"data": "app=sfinder", "content_type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ({"json": ["sfinder"]}, 400, "JSON object"),
    ({"json": "sfinder"}, 400, "JSON object"),
    ({"json": {}}, 400, "'app'"),
    ({"json": {"app": 5}}, 400, "'app'"),
    ({"json": {"app": "nope"}}, 404, "Unknown app 'nope'"),
    ({"json": {"app": "sleeper", "jobinputs": {}}}, 400, "Unknown field 'jobinputs'"),
    ({"json": {"app": "sleeper", "job_inputs": []}}, 400, "JSON object"),
    ({"json": {"app": "sleeper", "job_inputs": {"secs": 1}}}, 400, "Unknown option 'secs'"),
    ({"json": {"app": "sleeper", "job_inputs": {"seconds": "1"}}}, 400, "'seconds'"),
    ({"json": {"app": "sleeper", "job_inputs": {"seconds": -5}}}, 400, "'seconds'"),
    ({"json": {"app": "sleeper", "tag": 7}}, 400, "'tag'"),
    ({"json": {"app": "sleeper", "backend": "cloud9"}}, 400, "cloud9"),
    ({"json": {"app": "sleeper", "backend": "pulsar"}}, 400, "not enabled"),
    ({"json": {"app": "checksum", "job_inputs": {}}}, 400, "'inputfile'"),
    ({"json": {"app": "checksum", "job_inputs": {"inputfile": "0123456789abcdef0123456789abcdef"}}}, 400,
     "no uploaded file"),
    ({"json": {"app": "checksum", "job_inputs": {"inputfile": "/etc/passwd"}}}, 400, "outside your data directory"),
    ({"json": {"app": "checksum", "job_inputs": {"inputfile": "../../../etc/passwd"}}}, 400,
     "outside your data directory"),
    ({"json": {"app": "checksum", "job_inputs": {"inputfile": "x\u0000y"}}}, 400, "NUL"),
    ({"json": {"app": "checksum", "job_inputs": {"inputfile": 12}}}, 400, "'inputfile'"),
    ({"json": {"app": "sleeper", "data_inputs": "zz"}}, 400, "data_inputs"),
    ({"json": {"app": "sleeper", "data_inputs": [1]}}, 400, "data_inputs"),
])
def test_bad_job_requests(app, client, fits, kwargs, status, words):
    before = job_rows(app)
    r = post_job(client, **kwargs)
    assert r.status_code == status, r.get_json()
    body = r.get_json()
    assert body["code"] == status and words in body["message"] and body["status"] == body["message"]
    assert job_rows(app) == before


def test_path_escape_through_the_data_dir_is_refused(app, client, fits, settings):
    data_dir = Path(fits["path"]).parent
    for sneaky in (f"{data_dir}/../../caesar.db", f"{data_dir}/./../anonymous/../../caesar.db"):
        r = post_job(client, json={"app": "checksum", "job_inputs": {"inputfile": sneaky}})
        assert r.status_code == 400 and "inputfile" in r.get_json()["message"]
    link = data_dir / "link.fits"
    os.symlink("/etc/passwd", link)
    r = post_job(client, json={"app": "checksum", "job_inputs": {"inputfile": str(link)}})
    assert r.status_code == 400 and "outside" in r.get_json()["message"]
    unregistered = data_dir / "loose.fits"
    unregistered.write_bytes(b"x")
    r = post_job(client, json={"app": "checksum", "job_inputs": {"inputfile": str(unregistered)}})
    assert r.status_code == 400 and "not an uploaded file" in r.get_json()["message"]
    assert job_rows(app) == 0


def test_file_option_accepts_uuid_or_path(client, fits):
    for ref in (fits["uuid"], fits["path"]):
        r = post_job(client, json={"app": "checksum", "job_inputs": {"inputfile": ref}})
        assert r.status_code == 202


@pytest.mark.parametrize("path", ["/job/not-a-uuid/status", "/job/not-a-uuid/output", "/job/1234/cancel",
                                  "/job/x/logs", "/job/x/metadata"])
def test_malformed_job_id_is_400(client, path):
    r = client.get(f"{API}{path}")
    assert r.status_code == 400 and "job id" in r.get_json()["message"]


@pytest.mark.parametrize("path", ["/job/{}/status", "/job/{}/output", "/job/{}/cancel", "/job/{}/logs",
                                  "/job/{}/metadata"])
def test_unknown_job_is_404(client, path):
    job_id = "69ca62d7-5098-4fe7-a675-63895a2d06b1"
    r = client.get(API + path.format(job_id))
    assert r.status_code == 404 and job_id in r.get_json()["message"]


def test_wrong_methods_and_unknown_routes_are_json(client):
    r = client.delete(f"{API}/job")
    assert r.status_code == 405 and r.get_json()["code"] == 405
    r = client.get(f"{API}/nowhere")
    assert r.status_code == 404 and r.get_json()["code"] == 404


@pytest.mark.parametrize("query", ["page=0", "page=x", "per_page=100000", "state=DONE"])
def test_bad_list_queries(client, query):
    r = client.get(f"{API}/jobs?{query}")
    assert r.status_code == 400 and r.get_json()["message"]


def test_logs_tail(app, client):
    from workers.runner import Runner
    job_id = post_job(client, json={"app": "sleeper", "job_inputs": {"seconds": 0}}).get_json()["job_id"]
    Runner(app.config).run(job_id)
    logs = client.get(f"{API}/job/{job_id}/logs?tail=1").get_json()
    assert logs["stdout"] == "slept 0.0 s"
    assert client.get(f"{API}/job/{job_id}/logs?tail=-3").status_code == 400
