"""TES s3:// URLs against moto's S3 server, with the real API and worker on STORAGE s3: the service's own bucket
(uploads under S3_PREFIX, archived jobs under S3_PREFIX/jobs/) is never reachable from a task, whoever's keys
would be used; other buckets only as TES_S3_BUCKETS opens them (to whom, for what) or with a user's own keys
(AUTH_USERS.<name>.s3). Anything else is a 400 naming the URL, before any task exists."""
from __future__ import annotations

import json

import pytest
import requests

from ..support import API, embedded_settings, start_api, start_worker
from .conftest import TOKENS, USERS, Tes, transfer_settings, unique

SERVICE_BUCKET, OPEN_BUCKET, ALICE_BUCKET = "caesar-service", "caesar-open", "alice-own"
PRIVATE_BUCKET = "caesar-listed-private"       # listed as open, but the far side does not let anonymous read


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory, s3_server):
    """Uploads in SERVICE_BUCKET (the service's keys); OPEN_BUCKET read-only for everyone (unsigned requests, a
    public bucket); PRIVATE_BUCKET listed the same way but not public; SERVICE_BUCKET's public/ read-only for
    everyone with keys of that entry (a prefix beside the service's); alice's own keys."""
    endpoint, s3 = s3_server
    for bucket in (SERVICE_BUCKET, OPEN_BUCKET, ALICE_BUCKET, PRIVATE_BUCKET):
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_policy(Bucket=OPEN_BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
         "Resource": [f"arn:aws:s3:::{OPEN_BUCKET}", f"arn:aws:s3:::{OPEN_BUCKET}/*"]}]}))
    base = tmp_path_factory.mktemp("tes-s3")
    (base / "files").mkdir()
    users = {**USERS, "alice": {**USERS["alice"], "s3": {"access_key_id": "alice-key",
                                                         "secret_access_key": "alice-secret"}}}
    transfers = transfer_settings(base / "files", endpoint)
    transfers["TES_S3_BUCKETS"] += [{"bucket": OPEN_BUCKET, "users": "*", "access": "read"},
                                    {"bucket": PRIVATE_BUCKET, "users": "*", "access": "read"},
                                    {"bucket": SERVICE_BUCKET, "prefix": "public", "users": "*", "access": "read",
                                     "credentials": {"access_key_id": "public-reader",
                                                     "secret_access_key": "public-reader-secret"}}]
    settings = embedded_settings(base / "var", AUTH_MODE="token", AUTH_USERS=users, TES_HOST_RUNTIME=True,
                                 STORAGE="s3", S3_BUCKET=SERVICE_BUCKET, S3_ACCESS_KEY_ID="testing",
                                 S3_SECRET_ACCESS_KEY="testing", TES_TRANSFER_TIMEOUT=10, **transfers)
    worker = start_worker(settings, ["local"], base / "worker.log", concurrency=1)
    try:
        api, url = start_api(settings, base / "api.log")
    except Exception:
        worker.stop()
        raise
    yield url, s3
    api.stop()
    worker.stop()


def _upload(base: str, user: str, content: bytes) -> str:
    r = requests.post(f"{base}{API}/upload", files={"file": ("private.txt", content)},
                      headers={"Authorization": f"Bearer {TOKENS[user]}"}, timeout=20)
    assert r.status_code == 200, r.text
    assert r.json()["path"].startswith(f"s3://{SERVICE_BUCKET}/caesar/data/{user}/"), r.json()
    return r.json()["path"]


def _read(url: str, kind: str = "FILE") -> dict:
    return {"inputs": [{"url": url, "path": "/data/in", "type": kind}],
            "executors": [{"image": "alpine", "command": ["sh", "-c", "cat /data/in || ls -R /data/in"]}]}


def _write(url: str, kind: str = "FILE") -> dict:
    return {"outputs": [{"url": url, "path": "/out/x" if kind == "FILE" else "/out", "type": kind}],
            "executors": [{"image": "alpine", "command": ["sh", "-c", "mkdir -p /out && echo overwritten > /out/x"]}]}


def _refused(tes: Tes, task: dict, field: str, url: str, why: str) -> None:
    before = tes.call("GET", "/tasks", params={"view": "MINIMAL"}).json().get("tasks", [])
    r = tes.call("POST", "/tasks", json=task)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and url in r.json()["message"] and why in r.json()["message"], r.json()
    assert tes.call("GET", "/tasks", params={"view": "MINIMAL"}).json().get("tasks", []) == before


def test_no_task_reaches_the_services_own_bucket(s3_stack):
    base, s3 = s3_stack
    secret = b"bob's unpublished catalogue\n"
    bobs = _upload(base, "bob", secret)
    alice = Tes(base, TOKENS["alice"])          # with S3 keys of her own: they do not open the service's bucket
    own = "the service's own storage"
    _refused(alice, _read(bobs), "inputs[0].url", bobs, own)
    _refused(alice, _write(bobs), "outputs[0].url", bobs, own)
    for url in (f"s3://{SERVICE_BUCKET}/caesar", f"s3://{SERVICE_BUCKET}/", f"s3://{SERVICE_BUCKET}/caesar/data/bob"):
        _refused(alice, _read(url, "DIRECTORY"), "inputs[0].url", url, own)     # a listing above or at the prefix
    jobs = f"s3://{SERVICE_BUCKET}/caesar/data/jobs/bob/{unique('job')}/stdout.log"
    _refused(alice, _write(jobs), "outputs[0].url", jobs, own)
    _refused(alice, _write(f"s3://{SERVICE_BUCKET}/caesar/data/jobs", "DIRECTORY"), "outputs[0].url",
             f"s3://{SERVICE_BUCKET}/caesar/data/jobs", own)
    beside = f"s3://{SERVICE_BUCKET}/elsewhere/x.txt"            # the rest of the bucket: not opened to anyone
    _refused(alice, _read(beside), "inputs[0].url", beside, "holds the service's own storage")
    bucket, key = bobs[len("s3://"):].split("/", 1)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == secret


def test_other_buckets_only_as_opened_or_with_the_users_own_keys(s3_stack):
    base, s3 = s3_stack
    run = unique("s3")
    s3.put_object(Bucket=OPEN_BUCKET, Key=f"{run}/open.txt", Body=b"open to all\n")
    s3.put_object(Bucket=ALICE_BUCKET, Key=f"{run}/mine.txt", Body=b"alice's\n")
    s3.put_object(Bucket=SERVICE_BUCKET, Key=f"public/{run}.txt", Body=b"published\n")
    alice, bob = Tes(base, TOKENS["alice"]), Tes(base, TOKENS["bob"])

    for tes, url, body in ((bob, f"s3://{OPEN_BUCKET}/{run}/open.txt", "open to all\n"),
                           (bob, f"s3://{SERVICE_BUCKET}/public/{run}.txt", "published\n"),
                           (alice, f"s3://{ALICE_BUCKET}/{run}/mine.txt", "alice's\n")):
        task = tes.run(_read(url))
        assert task["state"] == "COMPLETE", task["logs"][0]["system_logs"]
        assert task["logs"][0]["logs"][0]["stdout"] == body

    # Listed without keys, the requests go unsigned: a bucket that is not public answers 403, although the
    # service's own keys (S3_ACCESS_KEY_ID) would have been let in. moto checks anonymous access like S3.
    s3.put_object(Bucket=PRIVATE_BUCKET, Key=f"{run}/p.txt", Body=b"private\n")
    task = bob.run(_read(f"s3://{PRIVATE_BUCKET}/{run}/p.txt"))
    assert task["state"] == "SYSTEM_ERROR" and "403" in task["logs"][0]["system_logs"][-1], task["logs"][0]
    assert task["logs"][0]["logs"] == []

    _refused(bob, _write(f"s3://{OPEN_BUCKET}/{run}/x"), "outputs[0].url", f"s3://{OPEN_BUCKET}/{run}/x",
             "no S3 access for you to write")
    _refused(bob, _read(f"s3://{ALICE_BUCKET}/{run}/mine.txt"), "inputs[0].url",
             f"s3://{ALICE_BUCKET}/{run}/mine.txt", "no S3 credentials of yours")
    _refused(bob, _read("s3://Not_A_Bucket/k"), "inputs[0].url", "s3://Not_A_Bucket/k", "not an S3 bucket name")

    task = alice.run(_write(f"s3://{ALICE_BUCKET}/{run}/out.txt"))
    assert task["state"] == "COMPLETE", task["logs"][0]["system_logs"]
    assert s3.get_object(Bucket=ALICE_BUCKET, Key=f"{run}/out.txt")["Body"].read() == b"overwritten\n"
