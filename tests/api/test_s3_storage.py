"""S3 storage (STORAGE=s3) against moto's server: uploads streamed into multipart uploads and back out with flat
memory, presigned downloads, sha256 + CRC64NVME computed by us (awscrt) and verified when a job stages a file."""
from __future__ import annotations

import hashlib
import os
import time

import requests

from caesar_rest import s3store
from caesar_rest.db import dispose_all

from ..backends.batch_fixtures import aws, s3_settings
from ..support import API, client_status, start_api, upload, wait_state

MB = 1024 * 1024


def object_of(record: dict) -> tuple[str, str]:
    assert record["path"].startswith("s3://"), record["path"]
    return s3store.split_url(record["path"])


def test_round_trip_with_checksums(batch_stack):
    client, s3 = batch_stack.client, aws("s3", batch_stack.setup.endpoint)
    content = os.urandom(3 * MB + 17)
    record = upload(client, content, "image.fits", tag="s3")
    expected = s3store.Checksums()
    expected.update(content)
    assert record["sha256"] == hashlib.sha256(content).hexdigest()
    assert record["crc64nvme"] == expected.crc64nvme
    bucket, key = object_of(record)
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(content)
    assert head["Metadata"] == {"sha256": record["sha256"], "crc64nvme": record["crc64nvme"]}
    listed = {f["uuid"]: f for f in client.get(f"{API}/fileids?tag=s3").get_json()}
    assert listed[record["uuid"]]["crc64nvme"] == record["crc64nvme"]
    response = client.get(f"{API}/download-id/{record['uuid']}")
    assert response.status_code == 200 and response.data == content
    assert response.headers["Content-Length"] == str(len(content))
    assert "image.fits" in response.headers["Content-Disposition"]
    assert client.delete(f"{API}/delete/{record['uuid']}").status_code == 200
    assert s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 0
    assert client.get(f"{API}/download-id/{record['uuid']}").status_code == 404


def test_multipart_upload_for_files_above_one_part(batch_stack):
    content = os.urandom(20 * MB + 5)          # three 8 MiB parts, the last one short
    record = upload(batch_stack.client, content, "big.bin")
    bucket, key = object_of(record)
    head = aws("s3", batch_stack.setup.endpoint).head_object(Bucket=bucket, Key=key, PartNumber=1)
    assert head.get("PartsCount") == 3
    assert batch_stack.client.get(f"{API}/download-id/{record['uuid']}").data == content


def test_presigned_download(batch_stack):
    content = b"presigned bytes\n" * 100
    record = upload(batch_stack.client, content, "note.txt")
    response = batch_stack.client.get(f"{API}/download-id/{record['uuid']}?presign=1")
    assert response.status_code == 307
    fetched = requests.get(response.headers["Location"], timeout=30)
    assert fetched.status_code == 200 and fetched.content == content
    assert "note.txt" in fetched.headers.get("Content-Disposition", "")
    answer = batch_stack.client.get(f"{API}/download-id/{record['uuid']}?presign=json").get_json()
    assert requests.get(answer["url"], timeout=30).content == content and answer["expires_in"] == 3600
    bad = batch_stack.client.get(f"{API}/download-id/{record['uuid']}?presign=maybe")
    assert bad.status_code == 400 and bad.get_json()["field"] == "presign"


def test_corrupted_object_fails_the_job_naming_the_file(batch_stack):
    """Someone rewrites the object behind our back (same size): staging catches it, moto would not."""
    client, s3 = batch_stack.client, aws("s3", batch_stack.setup.endpoint)
    content = b"A" * 4096
    record = upload(client, content, "victim.dat")
    bucket, key = object_of(record)
    s3.put_object(Bucket=bucket, Key=key, Body=b"B" + content[1:])
    for backend in ("local", "batch"):
        response = client.post(f"{API}/job", json={"app": "checksum", "backend": backend,
                                                     "job_inputs": {"inputfile": record["uuid"]}})
        job_id = response.get_json()["job_id"]
        status = wait_state(client_status(client), job_id, timeout=120)
        assert status["state"] == "ABORTED", status
        assert "inputs/victim.dat" in status["status"] and record["uuid"] in status["status"]
        assert "CRC64NVME" in status["status"] and "sha256" in status["status"]


def test_local_storage_records_crc64nvme_too(client):
    record = upload(client, b"local bytes", "plain.txt")
    sums = s3store.Checksums()
    sums.update(b"local bytes")
    assert record["crc64nvme"] == sums.crc64nvme and not record["path"].startswith("s3://")


def _rss_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def test_large_file_round_trip_with_flat_memory(tmp_path, aws_setup):
    """300 MB up and down through a real API process: its peak RSS grows by far less than the file."""
    size = 300 * MB
    settings = s3_settings(tmp_path, aws_setup)
    api, base = start_api(settings, tmp_path / "api.log")
    try:
        requests.post(f"{base}{API}/upload", files={"file": ("warm.bin", b"w" * 1000)}, timeout=30)
        with open(f"/proc/{api.pid}/clear_refs", "w") as fh:
            fh.write("5")                      # reset the peak (VmHWM) to the current RSS
        before = _rss_kb(api.pid, "VmHWM")
        boundary = "caesarboundary7d3f"
        block = os.urandom(MB)
        digest = hashlib.sha256()

        def body():
            yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"huge.bin\"\r\n"
                   "Content-Type: application/octet-stream\r\n\r\n").encode()
            for i in range(size // MB):
                chunk = block[:MB - 8] + i.to_bytes(8, "big")
                digest.update(chunk)
                yield chunk
            yield f"\r\n--{boundary}--\r\n".encode()

        start = time.monotonic()
        response = requests.post(f"{base}{API}/upload", data=body(), timeout=600,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        up_s = time.monotonic() - start
        assert response.status_code == 200, response.text[:500]
        record = response.json()
        assert record["size_bytes"] == size and record["sha256"] == digest.hexdigest()
        after_upload = _rss_kb(api.pid, "VmHWM")
        start = time.monotonic()
        got = hashlib.sha256()
        length = 0
        with requests.get(f"{base}{API}/download-id/{record['uuid']}", stream=True, timeout=600) as answer:
            assert answer.status_code == 200
            for chunk in answer.iter_content(MB):
                got.update(chunk)
                length += len(chunk)
        down_s = time.monotonic() - start
        assert length == size and got.hexdigest() == record["sha256"]
        after_download = _rss_kb(api.pid, "VmHWM")
        growth_mb = (max(after_upload, after_download) - before) / 1024
        print(f"\n300 MB via S3 storage: upload {up_s:.1f} s, download {down_s:.1f} s; API peak RSS "
              f"{before / 1024:.0f} MB before, {after_upload / 1024:.0f} MB after upload, "
              f"{after_download / 1024:.0f} MB after download (+{growth_mb:.0f} MB)")
        assert growth_mb < 64, f"API peak RSS grew by {growth_mb:.0f} MB for a 300 MB file"
        assert requests.delete(f"{base}{API}/delete/{record['uuid']}", timeout=60).status_code == 200
    finally:
        api.stop()
        dispose_all()


def test_job_outputs_move_to_s3_and_come_back(batch_stack):
    """With STORAGE s3 a finished job's directory lives in the bucket: output, logs and checksums from there."""
    import io
    import tarfile
    from pathlib import Path

    client, s3 = batch_stack.client, aws("s3", batch_stack.setup.endpoint)
    record = upload(client, b"archive me\n" * 100, "kept.txt")
    job_id = client.post(f"{API}/job", json={"app": "checksum", "backend": "local",
                                             "job_inputs": {"inputfile": record["uuid"]}}).get_json()["job_id"]
    assert wait_state(client_status(client), job_id, timeout=120)["state"] == "SUCCESS"
    meta = client.get(f"{API}/job/{job_id}/metadata").get_json()
    settings = batch_stack.settings
    workdir = Path(settings["ROOT"]) / "jobs" / "anonymous" / job_id
    deadline = time.time() + 30
    while workdir.exists() and time.time() < deadline:      # removed right after the final state
        time.sleep(0.2)
    assert not workdir.exists()
    bucket = settings["S3_BUCKET"]
    prefix = f"{settings.get('S3_PREFIX', 'caesar/data/')}jobs/anonymous/{job_id}/"
    keys = {o["Key"].rsplit("/", 1)[-1]: o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert {"checksum.txt", "stdout.log", "stderr.log", "caesar_job.json"} <= set(keys)
    head = s3.head_object(Bucket=bucket, Key=keys["checksum.txt"])
    out = {o["path"]: o for o in meta["outputs"]}["checksum.txt"]
    assert head["Metadata"]["sha256"] == out["sha256"] and head["Metadata"]["crc64nvme"] == out["crc64nvme"]
    r = client.get(f"{API}/job/{job_id}/output")
    assert r.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(r.data), mode="r:gz") as tar:
        assert tar.extractfile(f"job_{job_id}/checksum.txt").read().split()[0].decode() == record["sha256"]
        assert f"job_{job_id}/stdout.log" in tar.getnames()
    logs = client.get(f"{API}/job/{job_id}/logs?tail=1").get_json()
    assert record["sha256"] in logs["stdout"]


def test_archived_outputs_are_in_place_when_the_end_is_recorded(tmp_path, aws_setup):
    """With S3 storage the end of a job is recorded in the same commit that names the S3 copy of its directory, so a
    client that downloads as soon as it sees the end gets the whole tarball. (The end used to be committed first and
    the directory moved after: a download in between got a tarball without the app's outputs.)"""
    import json
    from pathlib import Path

    from caesar_rest import create_app

    from ..support import run_watching_the_end

    settings = s3_settings(tmp_path, aws_setup)
    app = create_app(settings)
    client = app.test_client()
    record = upload(client, b"in place\n" * 10, "p.txt")
    job_id = client.post(f"{API}/job", json={"app": "checksum", "backend": "local",
                                             "job_inputs": {"inputfile": record["uuid"]}}).get_json()["job_id"]
    state, extra, files = run_watching_the_end(app, job_id)
    assert state == "SUCCESS"
    assert extra.get("output_store", "").startswith("s3://"), extra
    assert {"checksum.txt", "stdout.log", "stderr.log", "caesar_job.json"} <= set(files), sorted(files)
    assert files["checksum.txt"].split()[0].decode() == record["sha256"]
    assert json.loads(files["caesar_job.json"])["state"] == "SUCCESS"
    # after the end: the local copy is gone, the worker's caesar_job.json is in the bucket
    assert not (Path(settings["ROOT"]) / "jobs" / "anonymous" / job_id).exists()
    bucket, prefix = s3store.split_url(extra["output_store"])
    body = aws("s3", aws_setup.endpoint).get_object(Bucket=bucket, Key=f"{prefix}caesar_job.json")["Body"].read()
    assert json.loads(body)["state"] == "SUCCESS"
    dispose_all()


def test_outputs_stay_on_disk_when_the_archive_fails(tmp_path, aws_setup):
    """The worker's S3 copy fails (its bucket does not exist): the job's result stands, the failure is named in its
    record, committed with the end, and the tarball comes whole from the local directory."""
    from pathlib import Path

    from caesar_rest import create_app
    from workers.runner import Runner

    from ..support import run_watching_the_end

    settings = s3_settings(tmp_path, aws_setup)
    app = create_app(settings)
    job_id = app.test_client().post(f"{API}/job", json={"app": "sleeper", "backend": "local",
                                                         "job_inputs": {"seconds": 0}}).get_json()["job_id"]
    runner = Runner({**app.config, "S3_BUCKET": "caesar-no-such-bucket"})
    state, extra, files = run_watching_the_end(app, job_id, runner)
    assert state == "SUCCESS" and "output_store" not in extra
    assert "caesar-no-such-bucket" in extra["output_store_error"] or "NoSuchBucket" in extra["output_store_error"]
    assert {"sleeper.txt", "stdout.log", "caesar_job.json"} <= set(files), sorted(files)
    workdir = Path(settings["ROOT"]) / "jobs" / "anonymous" / job_id
    assert (workdir / "sleeper.txt").is_file() and (workdir / "caesar_job.json").is_file()
    dispose_all()


def test_a_cancel_that_ends_the_job_first_keeps_the_local_directory(tmp_path, aws_setup, monkeypatch):
    """Another writer (a cancel) ends the job while the worker copies its directory to S3: the worker's end loses,
    so its copy is dropped again and the directory stays where downloads of the canceled job read it."""
    import io
    import tarfile
    from pathlib import Path

    from caesar_rest import create_app
    from caesar_rest.db import session_scope
    from caesar_rest.models import Job
    from caesar_rest.states import transition
    from workers import job_dir
    from workers.runner import Runner

    settings = s3_settings(tmp_path, aws_setup)
    app = create_app(settings)
    client = app.test_client()
    job_id = client.post(f"{API}/job", json={"app": "sleeper", "backend": "local",
                                             "job_inputs": {"seconds": 0}}).get_json()["job_id"]
    real_archive, copies = job_dir.archive, []

    def archive_then_cancelled(*args):
        stored = real_archive(*args)
        copies.append(stored)
        with session_scope(app.config["DATABASE_URL"]) as s:     # the cancel lands while the copy was made
            assert transition(s, job_id, "CANCELED", "Job canceled by user")
        return stored

    monkeypatch.setattr(job_dir, "archive", archive_then_cancelled)
    Runner(app.config).run(job_id)
    assert copies and copies[0]["output_store"].startswith("s3://")
    status = client.get(f"{API}/job/{job_id}/status").get_json()
    assert status["state"] == "CANCELED", status
    with session_scope(app.config["DATABASE_URL"]) as s:
        extra = s.get(Job, job_id).extra
    assert extra["outputs"] and "output_store" not in extra, extra      # the manifest is kept all the same
    bucket, prefix = s3store.split_url(copies[0]["output_store"])
    assert aws("s3", aws_setup.endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0) == 0
    assert (Path(settings["ROOT"]) / "jobs" / "anonymous" / job_id / "sleeper.txt").is_file()
    with tarfile.open(fileobj=io.BytesIO(client.get(f"{API}/job/{job_id}/output").data), mode="r:gz") as tar:
        assert f"job_{job_id}/sleeper.txt" in tar.getnames()
    dispose_all()


def test_s3_secret_never_reaches_answers_logs_or_files(tmp_path, aws_setup, caplog):
    """moto takes any key pair: a unique secret shows whether ours leaks anywhere."""
    import uuid
    from pathlib import Path

    from caesar_rest import create_app
    from workers.runner import Runner

    secret = f"caesar-secret-{uuid.uuid4().hex}"
    settings = s3_settings(tmp_path, aws_setup)
    settings["S3_SECRET_ACCESS_KEY"] = secret
    caplog.set_level("DEBUG")
    app = create_app(settings)
    client = app.test_client()
    seen = []
    record = upload(client, b"secret-free\n", "s.txt")
    seen.append(str(record))
    job_id = client.post(f"{API}/job", json={"app": "checksum", "job_inputs": {"inputfile": record["uuid"]}}
                         ).get_json()["job_id"]
    assert Runner(app.config).run(job_id) == "SUCCESS"
    for path in (f"/download-id/{record['uuid']}?presign=json", f"/download-id/{'0' * 32}", f"/job/{job_id}/metadata",
                 f"/job/{job_id}/status", f"/job/{job_id}/logs", "/fileids"):
        seen.append(client.get(API + path).get_data(as_text=True))
    seen.append(client.get("/health").get_data(as_text=True))
    seen.append(caplog.text)
    for path in Path(settings["ROOT"]).rglob("*"):
        if path.is_file():
            seen.append(path.read_bytes().decode("latin-1"))
    assert not any(secret in text for text in seen)
    dispose_all()


PROBE_APP = """
name: probe
version: "1"
command: [probe-tool]
backends: [remote_nofetch]
default_backend: remote_nofetch
outputs: [result.txt]
"""


def test_refetch_of_a_kept_copy_stores_the_outputs_in_s3(aws_setup, tmp_path):
    """Job directories in S3 (S3_JOB_OUTPUTS): a remote job whose outputs could not be fetched ends FAILURE with
    its copy kept; refetch brings the outputs into the job's S3 copy, and the tarball serves them from there. The
    remote backend is the fast layer's stand-in (tests/unit/standins.py), run in this process; S3 is moto's."""
    import io
    import tarfile

    from caesar_rest import create_app
    from workers import kept
    from workers.runner import Runner

    from ..support import write_apps

    settings = s3_settings(tmp_path, aws_setup)
    settings.update(APPS_DIR=str(write_apps(tmp_path / "apps2", {"probe": PROBE_APP})), FETCH_ATTEMPTS=1,
                    BACKENDS={"local": {}, "remote_nofetch": {"class": "tests.unit.standins:RemoteFetchFails",
                                                              "fetch_failures": 1}})
    app = create_app(settings)
    client = app.test_client()
    try:
        job_id = client.post(f"{API}/job", json={"app": "probe"}).get_json()["job_id"]
        runner = Runner(app.config)
        assert runner.run(job_id) == "poll"
        while (outcome := runner.poll_once(job_id)) == "poll":
            pass
        assert outcome == "FAILURE"
        meta = client.get(f"{API}/job/{job_id}/metadata").get_json()
        assert meta["kept_remote"]["backend"] == "remote_nofetch"
        done = kept.refetch(app.config, job_id)
        assert done["outputs"] >= 1
        meta = client.get(f"{API}/job/{job_id}/metadata").get_json()
        assert "result.txt" in {o["path"] for o in meta["outputs"]}
        bucket, prefix = s3store.split_url(_output_store(app, job_id))
        keys = [o["Key"] for o in aws("s3", aws_setup.endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix)
                .get("Contents", [])]
        assert any(k.endswith("/result.txt") for k in keys), keys
        r = client.get(f"{API}/job/{job_id}/output")
        with tarfile.open(fileobj=io.BytesIO(r.data), mode="r:gz") as tar:
            assert any(m.name.endswith("/result.txt") for m in tar.getmembers())
    finally:
        dispose_all()


def _output_store(app, job_id: str) -> str:
    from caesar_rest.db import session_scope
    from caesar_rest.models import Job

    with session_scope(app.config["DATABASE_URL"]) as s:
        return s.get(Job, job_id).extra["output_store"]


def test_a_resumable_upload_ends_in_s3_like_a_post_upload(batch_stack):
    """tus chunks land on the API host's disk; the whole file then goes to S3 as POST /upload's would (multipart
    upload, sha256 and CRC64NVME in its metadata), under the upload's uuid, and the local part is removed."""
    import base64
    from pathlib import Path

    client, s3 = batch_stack.client, aws("s3", batch_stack.setup.endpoint)
    content = os.urandom(9 * MB + 3)
    tus = {"Tus-Resumable": "1.0.0"}
    created = client.post(f"{API}/uploads", headers={**tus, "Upload-Length": str(len(content)),
                                                     "Upload-Metadata": "filename " + base64.b64encode(
                                                         b"cube.fits").decode()})
    url = created.headers["Location"]
    for offset in range(0, len(content), 4 * MB):
        answer = client.patch(url, data=content[offset:offset + 4 * MB], headers={
            **tus, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"})
        assert answer.status_code == 204, answer.get_json()
    record = client.get(url).get_json()["file"]
    assert record["uuid"] == url.rsplit("/", 1)[1] and record["sha256"] == hashlib.sha256(content).hexdigest()
    bucket, key = object_of(record)
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(content) and head["Metadata"]["sha256"] == record["sha256"]
    assert client.get(f"{API}/download-id/{record['uuid']}").data == content
    assert list(Path(client.application.config["DATA_DIR"]).glob("*/.tus-*.part")) == []
