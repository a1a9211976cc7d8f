"""The request shapes of the later upstream caesar-rest's clients (AstroView's CaesarApiClient), sent as they send
them to real API and worker processes: GET /download/<uuid>, job_options, data_inputs in its three shapes, the
describe keys, /accounting and /appstats; and the 400s, with nothing created."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
import requests

from caesar_rest import create_app
from caesar_rest.db import dispose_all

from ..support import API, embedded_settings, http_status, start_api, start_worker, wait_state

UPSTREAM_OPTION_KEYS = ("mandatory", "type", "default", "enum", "min", "max", "category", "subcategory", "advanced")
DATA = b"SIMPLE  =                    T / upstream client's file\n" * 40


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    settings = embedded_settings(root / "var")
    api, base = start_api(settings, root / "api.log")
    worker = start_worker(settings, ["local"], root / "worker.log", concurrency=2)
    yield base + API
    worker.stop()
    api.stop()


def _upload(url: str, content: bytes = DATA, name: str = "image.fits") -> str:
    r = requests.post(f"{url}/upload", files={"file": (name, io.BytesIO(content))}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["uuid"]


def _counts(url: str) -> tuple[int, int]:
    usage = requests.get(f"{url}/accounting", timeout=10).json()
    return usage["jobs"]["count"], usage["files"]["count"]


def _downloads_counted(url: str) -> float:
    text = requests.get(url.rsplit(API, 1)[0] + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('caesar_download_bytes_total{via="app"}'))


def test_download_by_the_upstream_name_and_the_original_one(stack):
    uuid = _upload(stack)
    before = _downloads_counted(stack)
    for route in ("download", "download-id"):
        r = requests.get(f"{stack}/{route}/{uuid}", timeout=10)
        assert r.status_code == 200 and r.content == DATA, route
    assert _downloads_counted(stack) - before == 2 * len(DATA)      # both routes count in the download metrics
    missing = requests.get(f"{stack}/download/{'0' * 32}", timeout=10)
    assert missing.status_code == 404 and "not found" in missing.json()["message"]


@pytest.mark.parametrize("shape", ["uuid", "list", "object", "object-list"])
def test_data_inputs_and_job_options_as_upstream_sends_them_run_the_job(stack, shape):
    """checksum's file option (inputfile) is bound from data_inputs; its options come as job_options."""
    uuid = _upload(stack)
    data_inputs = {"uuid": uuid, "list": [uuid], "object": {"data": uuid, "format": "fits"},
                   "object-list": {"data": [uuid], "format": "FITS"}}[shape]
    r = requests.post(f"{stack}/job", json={"app": "checksum", "job_options": {"algorithm": "md5"},
                                            "data_inputs": data_inputs, "tag": "astroview"}, timeout=30)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["job_inputs"] == {"inputfile": uuid, "algorithm": "md5"}
    status = wait_state(http_status(stack.rsplit(API, 1)[0]), job["job_id"], timeout=90)
    assert status["state"] == "SUCCESS", status
    out = requests.get(f"{stack}/job/{job['job_id']}/output", timeout=30)
    with tarfile.open(fileobj=io.BytesIO(out.content), mode="r:gz") as tar:
        member = tar.extractfile(f"job_{job['job_id']}/checksum.txt")
        assert member is not None
        assert hashlib.md5(DATA).hexdigest() in member.read().decode()
    inputs = requests.get(f"{stack}/job/{job['job_id']}/metadata", timeout=10).json()["inputs"]
    assert [(i["option"], i["uuid"]) for i in inputs] == [("inputfile", uuid)]


def test_data_inputs_beyond_the_file_options_are_staged_beside_them(stack):
    first, second = _upload(stack, name="a.fits"), _upload(stack, DATA + b"2", name="b.fits")
    r = requests.post(f"{stack}/job", json={"app": "checksum", "data_inputs": {"data": [first, second]}}, timeout=30)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.json()["job_inputs"]["inputfile"] == first
    assert wait_state(http_status(stack.rsplit(API, 1)[0]), job_id, timeout=90)["state"] == "SUCCESS"
    inputs = requests.get(f"{stack}/job/{job_id}/metadata", timeout=10).json()["inputs"]
    assert sorted((i["option"], i["uuid"], i["path"]) for i in inputs) == sorted(
        [("inputfile", first, "inputs/a.fits"), ("data_inputs", second, "inputs/b.fits")])


def test_bad_upstream_shapes_are_400s_naming_the_field_and_create_nothing(stack):
    uuid = _upload(stack)
    other = requests.post(f"{stack}/upload", files={"file": ("t.txt", io.BytesIO(b"text"))}, timeout=30).json()["uuid"]
    cases = [
        ({"job_inputs": {}, "job_options": {}}, "job_options", "not both"),
        ({"job_options": ["algorithm", "md5"]}, "job_options", "JSON object"),
        ({"data_inputs": {"format": "fits"}}, "data_inputs.data", "needs 'data'"),
        ({"data_inputs": {"data": uuid, "kind": "x"}}, "data_inputs", "'kind'"),
        ({"data_inputs": {"data": [uuid, 7]}}, "data_inputs.data", "file uuid"),
        ({"data_inputs": {"data": "not-a-uuid"}}, "data_inputs.data", "not a file uuid"),
        ({"data_inputs": []}, "data_inputs", "1-1000"),
        ({"data_inputs": [uuid, uuid]}, "data_inputs", "twice"),
        ({"data_inputs": {"data": uuid, "format": 3}}, "data_inputs.format", "format name"),
        ({"data_inputs": {"data": other, "format": "fits"}}, "data_inputs.format", "'txt', not 'fits'"),
        ({"data_inputs": "f" * 32}, "data_inputs", "no uploaded file"),
        ({"job_options": {"algorithm": "crc"}, "data_inputs": uuid}, "algorithm", "must be one of"),
    ]
    before = _counts(stack)
    for extra, named, words in cases:
        assert isinstance(extra, dict)
        r = requests.post(f"{stack}/job", json={"app": "checksum", **extra}, timeout=30)
        body = r.json()
        assert r.status_code == 400, (extra, body)
        assert named in (body.get("field"), body.get("option")), (extra, body)
        assert words in body["message"], (extra, body)
    assert _counts(stack) == before


def test_describe_carries_the_keys_upstream_clients_read(stack):
    for name in ("sfinder", "checksum", "sleeper"):
        options = requests.get(f"{stack}/app/{name}/describe", timeout=10).json()["options"]
        for option in options:
            assert all(k in option for k in UPSTREAM_OPTION_KEYS), option
            assert option["mandatory"] is option["required"] and isinstance(option["advanced"], bool)
    sfinder = {o["name"]: o for o in requests.get(f"{stack}/app/sfinder/describe", timeout=10).json()["options"]}
    expected = {"type": "float", "default": 5.0, "min": 0.5, "max": 1000, "enum": None, "category": "detection",
                "subcategory": None, "mandatory": False, "advanced": False}
    assert {k: sfinder["seedthr"][k] for k in expected} == expected
    assert sfinder["inputfile"]["mandatory"] is True
    assert sfinder["boxsize"]["advanced"] is True and sfinder["boxsize"]["subcategory"] == "boxes"
    checksum = {o["name"]: o for o in requests.get(f"{stack}/app/checksum/describe", timeout=10).json()["options"]}
    assert checksum["algorithm"]["enum"] == ["sha256", "sha512", "md5", "blake2b"]


TOKENS = {"alice": "alice-accounting-token", "bob": "bob-accounting-token", "root": "root-accounting-token"}


@pytest.fixture
def users_stack(tmp_path):
    """Token mode: two users and an admin, with real API and worker processes."""
    from caesar_rest.auth import hash_token

    users = {name: {"tokens_sha256": [hash_token(token)], **({"admin": True} if name == "root" else {})}
             for name, token in TOKENS.items()}
    settings = embedded_settings(tmp_path / "var", AUTH_MODE="token", AUTH_USERS=users)
    api, base = start_api(settings, tmp_path / "api.log")
    worker = start_worker(settings, ["local"], tmp_path / "worker.log", concurrency=2)
    yield base + API
    worker.stop()
    api.stop()


def _as(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def test_accounting_and_appstats_for_the_caller_and_for_an_admin(users_stack):
    url = users_stack
    for name, size in (("alice", 100), ("alice", 50), ("bob", 7)):
        r = requests.post(f"{url}/upload", files={"file": ("f.dat", io.BytesIO(b"x" * size))}, headers=_as(name),
                          timeout=30)
        assert r.status_code == 200, r.text
    ids = []
    for name, seconds in (("alice", 0.5), ("alice", 0.3), ("bob", 0.2)):
        r = requests.post(f"{url}/job", json={"app": "sleeper", "job_options": {"seconds": seconds}},
                          headers=_as(name), timeout=30)
        assert r.status_code == 202, r.text
        ids.append((name, r.json()["job_id"]))
    for name, job_id in ids:
        status = wait_state(lambda j, n=name: requests.get(f"{url}/job/{j}/status", headers=_as(n), timeout=10).json(),
                            job_id, timeout=90)
        assert status["state"] == "SUCCESS", status
    alice = requests.get(f"{url}/accounting", headers=_as("alice"), timeout=10).json()
    assert alice["user"] == "alice" and alice["admin"] is False and set(alice["users"]) == {"alice"}
    assert alice["files"] == {"count": 2, "bytes": 150}
    assert alice["jobs"]["count"] == 2 and alice["jobs"]["by_state"]["SUCCESS"] == 2
    assert alice["jobs"]["by_state"]["PENDING"] == 0
    assert 0.8 <= alice["jobs"]["job_seconds"] < 30
    admin = requests.get(f"{url}/accounting", headers=_as("root"), timeout=10).json()
    assert admin["admin"] is True and set(admin["users"]) == {"alice", "bob"}     # every user with files or jobs
    assert admin["users"]["bob"]["files"] == {"count": 1, "bytes": 7}
    assert admin["users"]["alice"] == {k: alice[k] for k in ("files", "jobs")}
    assert admin["files"] == {"count": 3, "bytes": 157} and admin["jobs"]["count"] == 3
    stats = requests.get(f"{url}/appstats", headers=_as("bob"), timeout=10).json()
    assert stats["apps"]["sleeper"]["count"] == 1 and stats["apps"]["sleeper"]["users"] == 1
    assert stats["apps"]["checksum"]["count"] == 0        # every registered app is listed
    every = requests.get(f"{url}/appstats", headers=_as("root"), timeout=10).json()["apps"]["sleeper"]
    assert every["count"] == 3 and every["users"] == 2 and every["by_state"]["SUCCESS"] == 3
    assert every["job_seconds"] >= 1.0
    assert requests.get(f"{url}/accounting", timeout=10).status_code == 401


def test_usage_queries_read_the_covering_indexes(tmp_path):
    """The plans SQLite picks for the usage GROUP BYs (migration 0007): the index alone, never the table."""
    from sqlalchemy import text

    from caesar_rest.db import engine_for

    app = create_app(embedded_settings(tmp_path / "var"))
    queries = ["SELECT owner, state, count(*), sum(elapsed) FROM jobs GROUP BY owner, state",
               "SELECT state, count(*), sum(elapsed) FROM jobs WHERE owner = 'a' GROUP BY state",
               "SELECT app, state, count(*), sum(elapsed) FROM jobs GROUP BY app, state",
               "SELECT app, count(DISTINCT owner) FROM jobs GROUP BY app"]
    with engine_for(app.config["DATABASE_URL"]).connect() as conn:
        for query in queries:
            plan = json.dumps([list(row) for row in conn.execute(text("EXPLAIN QUERY PLAN " + query))])
            assert "COVERING INDEX" in plan, (query, plan)
    dispose_all()
