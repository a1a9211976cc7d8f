"""Upload, list, download and delete: streamed to disk, checksums, limits, and nothing half-stored."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from caesar_rest import create_app

from ..support import API, upload


def data_files(settings) -> list[Path]:
    root = Path(settings["ROOT"]) / "data"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_upload_records_size_and_sha256_and_download_roundtrip(client, settings):
    content = b"SIMPLE  = T" + bytes(range(256)) * 1000
    rec = upload(client, content, "VGPS_cont_MOS017.fits", tag="survey")
    for key in ("uuid", "filename_orig", "format", "size", "date", "status", "path", "tag", "size_bytes", "sha256"):
        assert key in rec
    assert rec["filename_orig"] == "VGPS_cont_MOS017.fits" and rec["format"] == "fits" and rec["tag"] == "survey"
    assert rec["size_bytes"] == len(content) and rec["sha256"] == hashlib.sha256(content).hexdigest()
    assert rec["status"] == "File uploaded with success"
    assert Path(rec["path"]).read_bytes() == content
    assert Path(rec["path"]).name == f"{rec['uuid']}.fits"
    got = client.get(f"{API}/download-id/{rec['uuid']}")
    assert got.status_code == 200 and got.data == content
    assert "VGPS_cont_MOS017.fits" in got.headers["Content-Disposition"]
    assert client.post(f"{API}/download-id/{rec['uuid']}").data == content
    listed = client.get(f"{API}/fileids").get_json()
    assert [f["uuid"] for f in listed] == [rec["uuid"]]
    assert client.get(f"{API}/fileids?tag=other").get_json() == []


def test_no_temporary_part_file_is_left(client, settings):
    upload(client, b"x" * 100_000, "a.dat")
    names = [p.name for p in data_files(settings)]
    assert len(names) == 1 and not any(n.startswith(".upload-") for n in names)


def test_download_unknown_uuid_is_404_json(client):
    r = client.get(f"{API}/download-id/67a49bf7555b41739095681bf52a1f99")
    assert r.status_code == 404
    assert r.get_json()["status"] == "File with uuid 67a49bf7555b41739095681bf52a1f99 not found on the system!"


def test_download_malformed_uuid_is_400(client):
    r = client.get(f"{API}/download-id/not-a-uuid")
    assert r.status_code == 400 and "uuid" in r.get_json()["message"]


def test_delete_removes_record_and_data(client, settings):
    rec = upload(client, b"abc", "a.txt")
    r = client.delete(f"{API}/delete/{rec['uuid']}")
    assert r.status_code == 200
    assert not Path(rec["path"]).exists()
    assert client.get(f"{API}/fileids").get_json() == []
    assert client.post(f"{API}/delete/{rec['uuid']}").status_code == 404


def test_delete_refused_while_a_pending_job_uses_the_file(client):
    rec = upload(client, b"abc", "a.txt")
    job = client.post(f"{API}/job", json={"app": "checksum", "job_inputs": {"inputfile": rec["uuid"]}}).get_json()
    r = client.delete(f"{API}/delete/{rec['uuid']}")
    assert r.status_code == 409 and job["job_id"] in r.get_json()["message"]
    assert Path(rec["path"]).exists()
    client.post(f"{API}/job/{job['job_id']}/cancel")
    assert client.delete(f"{API}/delete/{rec['uuid']}").status_code == 200


def test_size_limit_is_413_and_stores_nothing(tmp_path):
    settings = {"ROOT": str(tmp_path / "var"), "MAX_UPLOAD_BYTES": 1000}
    client = create_app(settings).test_client()
    r = client.post(f"{API}/upload", data={"file": (io.BytesIO(b"x" * 5000), "big.txt")},
                    content_type="multipart/form-data")
    assert r.status_code == 413 and r.get_json()["code"] == 413
    assert data_files(settings | {"ROOT": str(tmp_path / "var")}) == []
    assert client.get(f"{API}/fileids").get_json() == []


def test_allowed_formats_is_415(tmp_path):
    settings = {"ROOT": str(tmp_path / "var"), "ALLOWED_FORMATS": ["fits", "csv"]}
    client = create_app(settings).test_client()
    r = client.post(f"{API}/upload", data={"file": (io.BytesIO(b"x"), "a.exe")}, content_type="multipart/form-data")
    assert r.status_code == 415 and "'exe'" in r.get_json()["message"]
    assert data_files(settings) == []
    assert upload(client, b"1,2\n", "t.csv")["format"] == "csv"


@pytest.mark.parametrize("name, fmt", [("a.FITS", "fits"), ("img.fits.gz", "fits.gz"), ("noext", "bin"),
                                       ("archive.tar.gz", "tar.gz")])
def test_formats(client, name, fmt):
    assert upload(client, b"data", name)["format"] == fmt


@pytest.mark.parametrize("body, kwargs, status, words", [
    ({}, {"content_type": "multipart/form-data"}, 400, "field 'file'"),
    ({"other": (io.BytesIO(b"x"), "a.txt")}, {"content_type": "multipart/form-data"}, 400, "field 'file'"),
    ({"file": "not a file"}, {"content_type": "multipart/form-data"}, 400, "field 'file'"),
    ({"file": (io.BytesIO(b""), "empty.txt")}, {"content_type": "multipart/form-data"}, 400, "empty"),
    ({"file": (io.BytesIO(b"x"), "../etc/passwd")}, {"content_type": "multipart/form-data"}, 400, "plain name"),
    ({"file": (io.BytesIO(b"x"), "..")}, {"content_type": "multipart/form-data"}, 400, "plain name"),
    ({"file": (io.BytesIO(b"x"), "a\x00b.txt")}, {"content_type": "multipart/form-data"}, 400, "NUL"),
    (None, {"data": b"raw bytes", "content_type": "application/octet-stream"}, 415, "multipart/form-data"),
    (None, {"json": {"file": "x"}}, 415, "multipart/form-data"),
])
def test_bad_uploads_are_4xx_and_store_nothing(client, settings, body, kwargs, status, words):
    r = (client.post(f"{API}/upload", data=body, **kwargs) if body is not None
         else client.post(f"{API}/upload", **kwargs))
    assert r.status_code == status, r.get_json()
    assert words in r.get_json()["message"]
    assert data_files(settings) == []
    assert client.get(f"{API}/fileids").get_json() == []


def test_two_file_parts_are_refused(client, settings):
    r = client.post(f"{API}/upload", data={"file": [(io.BytesIO(b"a"), "a.txt"), (io.BytesIO(b"b"), "b.txt")]},
                    content_type="multipart/form-data")
    assert r.status_code == 400
    assert data_files(settings) == []


def test_a_chunked_body_the_server_did_not_pass_on_is_411(client, settings):
    # uWSGI's own HTTP socket gives the app an empty input for a chunked body (nginx de-chunks in production).
    r = client.post(f"{API}/upload", data=b"", headers={"Transfer-Encoding": "chunked",
                                                       "Content-Type": "multipart/form-data; boundary=B"})
    assert r.status_code == 411 and "Content-Length" in r.get_json()["message"]
    assert data_files(settings) == []


def test_refused_parts_are_never_written(client, settings, monkeypatch):
    from caesar_rest import storage

    opened = []
    real = storage.UploadSink.__init__
    monkeypatch.setattr(storage.UploadSink, "__init__",
                        lambda self, *a, **k: (opened.append(1), real(self, *a, **k))[1])
    r = client.post(f"{API}/upload", data={"file": (io.BytesIO(b"x" * 100000), "../escape.fits"),
                                           "other": (io.BytesIO(b"y" * 100000), "b.fits")},
                    content_type="multipart/form-data")
    assert r.status_code == 400 and "plain name" in r.get_json()["message"]
    assert opened == [] and data_files(settings) == []


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_concurrent_uploads_of_one_user_never_exceed_the_quota(tmp_path, database):
    import threading

    from ..support import create_pg_database, drop_pg_database

    url = create_pg_database() if database == "postgresql" else None
    try:
        settings = {"ROOT": str(tmp_path / "var"), "MAX_STORED_BYTES_PER_USER": 2500,
                    **({"DATABASE_URL": url} if url else {})}
        app = create_app(settings)
        answers: list[int] = []
        start = threading.Barrier(6)

        def one(i: int) -> None:
            client = app.test_client()
            start.wait()
            r = client.post(f"{API}/upload", data={"file": (io.BytesIO(b"q" * 1000), f"f{i}.txt")},
                            content_type="multipart/form-data")
            answers.append(r.status_code)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(answers) == [200, 200, 507, 507, 507, 507]
        listed = app.test_client().get(f"{API}/fileids").get_json()
        assert len(listed) == 2 and len(data_files(settings)) == 2
    finally:
        if url:
            drop_pg_database(url)
