"""caesar_rest.client against the real API and worker processes: every endpoint, streamed transfers with progress,
keyset paging, and errors carrying the service's JSON error."""
from __future__ import annotations

import hashlib
import os
import tarfile

import pytest

from caesar_rest.client import Client, Conflict, InvalidOption, NotFound, TransportError, Unauthorized

from ..support import free_port
from .conftest import TOKENS


def test_upload_streams_with_progress_then_list_download_delete(client, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    source = tmp_path / "image.fits"
    source.write_bytes(data)
    seen: list[tuple[int, int | None]] = []
    record = client.upload(source, tag="lib", progress=lambda done, total: seen.append((done, total)))
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size_bytes"] == len(data)
    assert len(seen) >= 4 and seen[-1] == (len(data), len(data))
    assert [d for d, _t in seen] == sorted(d for d, _t in seen)
    assert [f["uuid"] for f in client.files(tag="lib")] == [record["uuid"]]
    got: list[int] = []
    path = client.download(record["uuid"], tmp_path / "back", progress=lambda done, _total: got.append(done))
    assert path.read_bytes() == data and got[-1] == len(data)
    (tmp_path / "dir").mkdir()
    assert client.download(record["uuid"], tmp_path / "dir") == tmp_path / "dir" / "image.fits"
    assert client.delete_file(record["uuid"])["uuid"] == record["uuid"]
    with pytest.raises(NotFound) as missing:
        client.download(record["uuid"], tmp_path / "gone")
    assert "not found" in missing.value.message and not (tmp_path / "gone").exists()
    assert not (tmp_path / "gone.part").exists()


def test_apps_describe_submit_wait_logs_metadata_output(client, tmp_path):
    assert {"sfinder", "checksum", "sleeper"} <= {a["name"] for a in client.apps()}
    options = {o["name"]: o for o in client.describe("sleeper")["options"]}
    assert options["seconds"]["type"] == "float" and options["allocate-mb"]["category"] == "testing"
    job = client.submit("sleeper", {"seconds": 0.2, "message": "from the library"}, tag="lib-job")
    assert job["state"] == "PENDING"
    seen: list[str] = []
    final = client.wait(job["job_id"], timeout=60, interval=0.1, on_status=lambda s: seen.append(s["state"]))
    assert final["state"] == "SUCCESS" and final["exit_status"] == 0 and seen[-1] == "SUCCESS"
    assert "from the library" in client.logs(job["job_id"])["stdout"]
    meta = client.metadata(job["job_id"])
    assert meta["app"] == "sleeper" and meta["job_inputs"]["message"] == "from the library"
    assert client.job(job["job_id"])["tag"] == "lib-job"
    assert client.notifications(job["job_id"])["subscriptions"] == []
    progress: list[int] = []
    archive = client.output(job["job_id"], tmp_path, progress=lambda done, _t: progress.append(done))
    assert archive.name == f"job_{job['job_id']}.tar.gz" and progress
    with tarfile.open(archive) as tar:
        assert f"job_{job['job_id']}/sleeper.txt" in tar.getnames()


def test_cancel_and_errors_carry_the_service_json(client):
    job = client.submit("sleeper", {"seconds": 60})
    answer = client.cancel(job["job_id"])
    assert answer["job_id"] == job["job_id"]
    assert client.wait(job["job_id"], timeout=60)["state"] == "CANCELED"
    with pytest.raises(Conflict) as again:
        client.cancel(job["job_id"])
    assert again.value.status == 409 and again.value.body["state"] == "CANCELED"
    with pytest.raises(InvalidOption) as bad:
        client.submit("sleeper", {"seconds": -3})
    assert bad.value.option == "seconds" and bad.value.error == "invalid_option" and bad.value.code == 400
    assert bad.value.message == "Option 'seconds' of app 'sleeper' must be >= 0, not -3.0"
    with pytest.raises(NotFound):
        client.describe("nope")


def test_iter_jobs_pages_by_keyset_token(client):
    ids = [client.submit("sleeper", {"seconds": 0}, tag="paging")["job_id"] for _ in range(5)]
    page = client.jobs(tag="paging", per_page=2)
    assert len(page["jobs"]) == 2 and page["next_page_token"]
    listed = [j["job_id"] for j in client.iter_jobs(tag="paging", per_page=2)]
    assert listed == list(reversed(ids))
    assert [j["job_id"] for j in client.iter_jobs(limit=3, per_page=2, tag="paging")] == listed[:3]
    for job_id in ids:
        client.wait(job_id, timeout=60, interval=0.1)


def test_another_user_and_bad_credentials(stack, client):
    job = client.submit("sleeper", {"seconds": 0})
    with Client(stack["base"], token=TOKENS["bob"]) as bob, pytest.raises(NotFound):
        bob.status(job["job_id"])
    with Client(stack["base"], token="wrong") as nobody, pytest.raises(Unauthorized) as denied:
        nobody.files()
    assert denied.value.status == 401 and denied.value.message == "The credentials were not accepted"
    with Client(f"http://127.0.0.1:{free_port()}") as closed, pytest.raises(TransportError):
        closed.apps()
    client.wait(job["job_id"], timeout=60, interval=0.1)


def test_accounting_and_appstats(client, tmp_path):
    source = tmp_path / "counted.txt"
    source.write_bytes(b"12345")
    record = client.upload(source)
    job = client.submit("sleeper", {"seconds": 0})
    client.wait(job["job_id"], timeout=60, interval=0.1)
    usage = client.accounting()
    mine = client.files()
    assert usage["user"] == "alice" and usage["admin"] is False and list(usage["users"]) == ["alice"]
    assert usage["files"] == {"count": len(mine), "bytes": sum(f["size_bytes"] for f in mine)}
    assert usage["jobs"]["by_state"]["SUCCESS"] >= 1
    stats = client.appstats()["apps"]
    assert stats["sleeper"]["by_state"]["SUCCESS"] >= 1 and stats["sleeper"]["users"] == 1
    client.delete_file(record["uuid"])
