"""Resumable uploads over tus 1.0 (caesar_rest/api/tus.py), request by request through the Flask test client:
discovery, creation, chunks with checksums, offsets, the end that makes a File, termination, expiry, quota and
ownership. Each refusal changes nothing: no row, no bytes kept past the recorded offset."""
from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from caesar_rest import create_app, resumable
from caesar_rest.auth import hash_token
from caesar_rest.db import session_scope
from caesar_rest.models import File, Upload

from ..support import API, embedded_settings

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = "application/offset+octet-stream"
USERS = {"alice": {"tokens_sha256": [hash_token("alice-token")], "max_stored_bytes": 10_000},
         "bob": {"tokens_sha256": [hash_token("bob-token")]}}
ALICE = {**TUS, "Authorization": "Bearer alice-token"}
BOB = {**TUS, "Authorization": "Bearer bob-token"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def metadata(name: str = "image.fits", tag: str | None = None) -> str:
    return f"filename {b64(name)}" + (f",tag {b64(tag)}" if tag is not None else "")


def sha1_header(data: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()


@pytest.fixture
def tus(tmp_path):
    app = create_app(embedded_settings(tmp_path / "var"))
    return app, app.test_client()


@pytest.fixture
def users(tmp_path):
    app = create_app(embedded_settings(tmp_path / "var", AUTH_MODE="token", AUTH_USERS=USERS))
    return app, app.test_client()


def create(client, length: int, headers=TUS, **meta) -> str:
    r = client.post(f"{API}/uploads", headers={**headers, "Upload-Length": str(length),
                                                "Upload-Metadata": metadata(**meta)})
    assert r.status_code == 201, r.get_json()
    assert r.headers["Tus-Resumable"] == "1.0.0" and r.headers["Upload-Offset"] == "0"
    return r.headers["Location"]


def patch(client, url: str, offset: int, data: bytes, headers=TUS, **extra):
    return client.patch(url, data=data, headers={**headers, "Upload-Offset": str(offset), "Content-Type": CHUNK,
                                                 **extra})


def rows(app) -> list[Upload]:
    with session_scope(app.config["DATABASE_URL"]) as s:
        return list(s.scalars(select(Upload)))


def files(app) -> list[File]:
    with session_scope(app.config["DATABASE_URL"]) as s:
        return list(s.scalars(select(File)))


def parts(app) -> list[Path]:
    return sorted(Path(app.config["DATA_DIR"]).glob("*/.tus-*.part"))


def test_discovery_names_the_version_extensions_size_and_checksums(tus):
    _app, client = tus
    r = client.options(f"{API}/uploads")
    assert r.status_code == 204
    assert r.headers["Tus-Resumable"] == "1.0.0" and r.headers["Tus-Version"] == "1.0.0"
    assert set(r.headers["Tus-Extension"].split(",")) == {"creation", "creation-with-upload", "termination",
                                                          "checksum", "expiration"}
    assert r.headers["Tus-Max-Size"] == str(64 * 1024**3)
    assert "sha1" in r.headers["Tus-Checksum-Algorithm"].split(",")


def test_an_upload_in_checked_chunks_becomes_a_file_like_post_upload(tus):
    app, client = tus
    data = os.urandom(2_500_000)
    url = create(client, len(data), tag="run-7")
    upload_id = url.rsplit("/", 1)[1]
    head = client.head(url, headers=TUS)
    assert head.status_code == 200 and head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Length"] == str(len(data)) and head.headers["Cache-Control"] == "no-store"
    assert "GMT" in head.headers["Upload-Expires"]
    for offset in range(0, len(data), 1_000_000):
        chunk = data[offset:offset + 1_000_000]
        r = patch(client, url, offset, chunk, **{"Upload-Checksum": sha1_header(chunk)})
        assert r.status_code == 204, r.get_json()
        assert r.headers["Upload-Offset"] == str(offset + len(chunk))
    assert r.headers["Caesar-File-Id"] == upload_id
    record = client.get(f"{API}/fileids").get_json()
    [only] = [f for f in (record if isinstance(record, list) else record["files"]) if f["uuid"] == upload_id]
    assert only["sha256"] == hashlib.sha256(data).hexdigest() and only["size_bytes"] == len(data)
    assert only["filename_orig"] == "image.fits" and only["tag"] == "run-7" and only["crc64nvme"]
    assert client.get(f"{API}/download/{upload_id}").get_data() == data
    view = client.get(url).get_json()
    assert view["complete"] is True and view["file"]["uuid"] == upload_id and view["expires"] is None
    assert parts(app) == [] and oct(Path(only["path"]).stat().st_mode & 0o777) == "0o440"
    # A client that lost the last answer asks again: done, nothing more to send.
    again = client.head(url, headers=TUS)
    assert again.headers["Upload-Offset"] == str(len(data)) and again.headers["Caesar-File-Id"] == upload_id


def test_a_chunk_whose_checksum_is_wrong_is_460_and_nothing_of_it_is_kept(tus):
    app, client = tus
    url = create(client, 200)
    assert patch(client, url, 0, b"a" * 100).status_code == 204
    r = patch(client, url, 100, b"b" * 50, **{"Upload-Checksum": sha1_header(b"c" * 50)})
    assert r.status_code == 460 and r.get_json()["error"] == "checksum_mismatch"
    assert "sha1" in r.get_json()["message"]
    assert client.head(url, headers=TUS).headers["Upload-Offset"] == "100"
    [part] = parts(app)
    assert part.stat().st_size == 100
    bad = patch(client, url, 100, b"b", **{"Upload-Checksum": "crc32 AAAA"})
    assert bad.status_code == 400 and "crc32" in bad.get_json()["message"]
    assert patch(client, url, 100, b"b" * 100, **{"Upload-Checksum": sha1_header(b"b" * 100)}).status_code == 204
    [record] = files(app)
    assert record.sha256 == hashlib.sha256(b"a" * 100 + b"b" * 100).hexdigest()


def test_wrong_offsets_types_versions_and_sizes_are_refused_naming_the_problem(tus):
    app, client = tus
    url = create(client, 100)
    r = patch(client, url, 10, b"x")
    assert r.status_code == 409 and r.get_json()["offset"] == 0
    r = client.patch(url, data=b"x", headers={**TUS, "Upload-Offset": "0", "Content-Type": "text/plain"})
    assert r.status_code == 415 and CHUNK in r.get_json()["message"]
    r = client.patch(url, data=b"x", headers={"Upload-Offset": "0", "Content-Type": CHUNK})
    assert r.status_code == 400 and r.get_json()["field"] == "Tus-Resumable"
    r = client.patch(url, data=b"x", headers={"Tus-Resumable": "0.2.2", "Upload-Offset": "0", "Content-Type": CHUNK})
    assert r.status_code == 412 and r.headers["Tus-Version"] == "1.0.0" and "'0.2.2'" in r.get_json()["message"]
    r = patch(client, url, 0, b"x" * 101)
    assert r.status_code == 413 and r.get_json()["left_bytes"] == 100
    r = client.patch(url, data=b"x", headers={**TUS, "Upload-Offset": "-1", "Content-Type": CHUNK})
    assert r.status_code == 400 and r.get_json()["field"] == "Upload-Offset"
    assert client.head(url, headers=TUS).headers["Upload-Offset"] == "0" and parts(app)[0].stat().st_size == 0


@pytest.mark.parametrize("headers, status, says", [
    ({"Upload-Metadata": f"filename {b64('../etc/passwd')}"}, 400, "plain name"),
    ({"Upload-Metadata": "filename !!notbase64"}, 400, "base64"),
    ({"Upload-Metadata": f"tag {b64('x')}"}, 400, "no file name"),
    ({"Upload-Length": "0"}, 400, "empty"),
    ({"Upload-Length": "12abc"}, 400, "Upload-Length"),
    ({"Upload-Length": str(64 * 1024**3 + 1)}, 413, "larger than"),
    ({"Upload-Defer-Length": "1"}, 400, "Upload-Defer-Length"),
])
def test_a_creation_that_breaks_a_rule_is_refused_and_leaves_nothing(tus, headers, status, says):
    app, client = tus
    base = {**TUS, "Upload-Length": "10", "Upload-Metadata": metadata()}
    r = client.post(f"{API}/uploads", headers={**base, **headers})
    assert r.status_code == status and says in r.get_json()["message"], r.get_json()
    assert rows(app) == [] and parts(app) == []


def test_a_format_the_server_does_not_accept_is_415_at_creation(tmp_path):
    app = create_app(embedded_settings(tmp_path / "var", ALLOWED_FORMATS=["fits"]))
    r = app.test_client().post(f"{API}/uploads", headers={**TUS, "Upload-Length": "5",
                                                          "Upload-Metadata": metadata("notes.txt")})
    assert r.status_code == 415 and r.get_json()["format"] == "txt" and rows(app) == []


def test_creation_with_upload_stores_the_first_chunk_at_once(tus):
    app, client = tus
    r = client.post(f"{API}/uploads", data=b"hello", headers={**TUS, "Upload-Length": "11", "Content-Type": CHUNK,
                                                              "Upload-Metadata": metadata("greeting.txt")})
    assert r.status_code == 201 and r.headers["Upload-Offset"] == "5"
    r = patch(client, r.headers["Location"], 5, b" world")
    assert r.status_code == 204 and "Caesar-File-Id" in r.headers
    assert Path(files(app)[0].path).read_bytes() == b"hello world"


def test_termination_removes_the_bytes_and_frees_the_quota_a_finished_file_stays(tus):
    app, client = tus
    url = create(client, 10)
    assert patch(client, url, 0, b"12345").status_code == 204
    assert client.delete(url, headers=TUS).status_code == 204
    assert rows(app) == [] and parts(app) == []
    assert client.head(url, headers=TUS).status_code == 404
    done = create(client, 3)
    patch(client, done, 0, b"abc")
    assert client.delete(done, headers=TUS).status_code == 204
    [record] = files(app)
    assert Path(record.path).read_bytes() == b"abc"


def test_another_users_upload_is_404_to_every_method(users):
    app, client = users
    url = create(client, 10, headers=ALICE)
    assert client.head(url, headers=BOB).status_code == 404
    assert client.get(url, headers=BOB).status_code == 404
    assert patch(client, url, 0, b"x" * 10, headers=BOB).status_code == 404
    assert client.delete(url, headers=BOB).status_code == 404
    [row] = rows(app)
    assert row.offset == 0 and row.owner == "alice" and parts(app)[0].stat().st_size == 0
    assert client.head(url, headers=ALICE).status_code == 200


def test_unfinished_uploads_count_against_the_quota_until_they_end(users):
    """alice may keep 10,000 bytes: an upload that declared 8,000 leaves 2,000 for anything else, POST /upload
    included; terminated, its room comes back."""
    _app, client = users
    url = create(client, 8_000, headers=ALICE)
    r = client.post(f"{API}/uploads", headers={**ALICE, "Upload-Length": "3000", "Upload-Metadata": metadata()})
    assert r.status_code == 507 and "reserved by unfinished uploads" in r.get_json()["message"]
    from io import BytesIO
    r = client.post(f"{API}/upload", headers={"Authorization": "Bearer alice-token"},
                    data={"file": (BytesIO(b"z" * 3000), "other.fits")}, content_type="multipart/form-data")
    assert r.status_code == 507
    assert client.delete(url, headers=ALICE).status_code == 204
    assert create(client, 3_000, headers=ALICE)


def test_a_second_writer_at_the_same_time_is_409_never_interleaved(tus):
    app, client = tus
    url = create(client, 10)
    [part] = parts(app)
    with open(part, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)        # a PATCH in progress elsewhere (another process)
        r = patch(client, url, 0, b"x" * 10)
    assert r.status_code == 409 and "one PATCH at a time" in r.get_json()["message"]
    assert part.stat().st_size == 0


def test_an_expired_upload_is_410_and_gone_and_the_reaper_removes_the_others(tmp_path):
    from workers.lost import reap

    settings = embedded_settings(tmp_path / "var", TUS_EXPIRE_AFTER=0.5)
    app = create_app(settings)
    client = app.test_client()
    first, second = create(client, 10), create(client, 10)
    assert patch(client, first, 0, b"12345").status_code == 204
    time.sleep(0.7)
    r = client.head(first, headers=TUS)
    assert r.status_code == 410
    r = patch(client, first, 5, b"67890")
    assert r.status_code in (404, 410)
    assert len(rows(app)) == 1 and len(parts(app)) == 1           # the second waits for the reaper
    done = reap(app.config, publish=lambda *_a: None, follow=lambda *_a: None, view=set)
    assert done["expired_uploads_removed"] == 1 and rows(app) == [] and parts(app) == []
    assert client.head(second, headers=TUS).status_code == 404


def test_the_reaper_removes_a_part_file_no_upload_records(tmp_path):
    """An API killed between making a part file and recording its upload leaves the file alone: once older than
    STALE_UPLOAD_AFTER, with no row, the reaper removes it; a recorded upload's part stays."""
    from workers.lost import reap

    app = create_app(embedded_settings(tmp_path / "var", STALE_UPLOAD_AFTER=60))
    client = app.test_client()
    kept = create(client, 10)
    [kept_part] = parts(app)
    orphan = Path(app.config["DATA_DIR"]) / "anonymous" / f".tus-{'a' * 32}.part"
    orphan.write_bytes(b"left behind")
    young = orphan.with_name(f".tus-{'b' * 32}.part")
    young.write_bytes(b"just made")
    old = time.time() - 120
    for path in (orphan, kept_part):
        os.utime(path, (old, old))
    done = reap(app.config, publish=lambda *_a: None, follow=lambda *_a: None, view=set)
    assert done["expired_uploads_removed"] == 1 and not orphan.exists() and young.exists()
    assert kept_part.exists() and client.head(kept, headers=TUS).status_code == 200



class CountingChecksums(resumable.BackgroundChecksums):
    made = 0

    def __init__(self, *args, **kwargs) -> None:
        type(self).made += 1
        super().__init__(*args, **kwargs)


@pytest.mark.parametrize("chain", ["whole", "broken by another process", "broken by a refused chunk"])
def test_the_last_chunk_makes_the_file_from_checksums_kept_on_the_way_in(tus, monkeypatch, chain):
    """The chunks are hashed as they come; the last one makes the file without reading the part file again, unless
    a chunk was served elsewhere (another process: nothing kept here), when the part file is hashed as before.
    Either way the record's sha256 and CRC64NVME are the whole file's."""
    from caesar_rest.checksums import Checksums

    app, client = tus
    CountingChecksums.made = 0
    monkeypatch.setattr(resumable, "BackgroundChecksums", CountingChecksums)    # the part file's re-hashing
    data = os.urandom(300_000)
    url = create(client, len(data))
    for start in range(0, len(data), 100_000):
        if chain == "broken by another process" and start == 200_000:
            resumable._RUNNING.clear()                    # as if the chunk before had gone to another process
        if chain == "broken by a refused chunk" and start == 100_000:
            bad = patch(client, url, start, data[start:start + 100_000], **{"Upload-Checksum": sha1_header(b"x")})
            assert bad.status_code == 460
        r = patch(client, url, start, data[start:start + 100_000])
        assert r.status_code == 204, r.get_json()
    [record] = files(app)
    whole = Checksums()
    whole.update(data)
    assert (record.sha256, record.crc64nvme, record.size_bytes) == (whole.sha256, whole.crc64nvme, len(data))
    assert CountingChecksums.made == (1 if chain == "broken by another process" else 0)
    assert url.rsplit("/", 1)[1] not in resumable._RUNNING        # nothing kept once whole
