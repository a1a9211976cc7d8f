"""The upload quota (MAX_STORED_BYTES_PER_USER, a user's max_stored_bytes) is checked against Content-Length before
the body is read, and enforced while the body streams in; nothing of a refused upload is kept."""
from __future__ import annotations

import io
import socket
import time
from pathlib import Path

from sqlalchemy import func, select

from caesar_rest.auth import hash_token
from caesar_rest.db import session_scope
from caesar_rest.models import File

from ..support import API, upload

QUOTA = 1024 * 1024
BOUNDARY = "quota-test-boundary"


def _multipart(size: int, name: str = "big.fits") -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + b"\x01" * size + f"\r\n--{BOUNDARY}--\r\n".encode()


def _parts(root: Path) -> list[Path]:
    return list((root / "data").glob("*/.upload-*.part"))


def _stored(root: Path) -> list[Path]:
    return [p for p in (root / "data").glob("*/*") if p.is_file()]


def test_content_length_over_the_quota_is_refused_before_the_body(api_process, tmp_path):
    """The client announces 100 MiB for alice, whose quota is 1 MiB, and sends only the headers: the answer comes
    at once. The old code read (here: waited for) the whole body before looking at the quota."""
    users = {"alice": {"tokens_sha256": [hash_token("alice-token")], "max_stored_bytes": QUOTA}}
    proc, base = api_process(AUTH_MODE="token", AUTH_USERS=users)
    host, port = base.split("//")[1].split(":")
    request = (f"POST {API}/upload HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer alice-token\r\n"
               f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {100 * QUOTA}\r\n\r\n"
               ).encode() + _multipart(0)[:120]
    with socket.create_connection((host, int(port)), timeout=20) as conn:
        conn.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or b"quota" not in answer:
            data = conn.recv(65536)        # socket.timeout here: the server is waiting for the body
            if not data:
                break
            answer += data
    status_line = answer.split(b"\r\n", 1)[0]
    assert b" 507 " in status_line, answer[:500]
    assert b"quota of 1048576 bytes" in answer
    root = Path(proc.log_path).parent / "var"
    assert _parts(root) == [] and _stored(root) == []


class WatchedBody(io.RawIOBase):
    """A request body read by the app through the server: at every read, the size of the part files the upload
    has on disk so far is recorded (the reads and the writes happen on the app's thread, one after the other)."""

    def __init__(self, data: bytes, root: Path) -> None:
        self.data = io.BytesIO(data)
        self.root = root
        self.largest = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        for part in _parts(self.root):
            try:
                self.largest = max(self.largest, part.stat().st_size)
            except FileNotFoundError:
                pass
        return self.data.read(size)

    def readinto(self, buffer) -> int:
        chunk = self.read(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)


def _chunked_upload(client, body: WatchedBody):
    """A body without Content-Length, as a server hands over a chunked upload it has de-chunked (gunicorn; the
    WSGI server marks the input as terminated)."""
    return client.post(f"{API}/upload", environ_overrides={
        "wsgi.input": body, "wsgi.input_terminated": True, "CONTENT_LENGTH": "",
        "CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}"})


def _settings(tmp_path):
    from ..support import embedded_settings
    return embedded_settings(tmp_path / "var", MAX_STORED_BYTES_PER_USER=QUOTA)


def test_a_body_without_length_stops_being_stored_at_the_quota(tmp_path):
    """8 MiB against a 1 MiB quota with no Content-Length to refuse early: the part file never grows past the
    quota while the body streams in, the answer is the quota's 507, and no part file or record is left. The old
    code stored all 8 MiB first and only then compared with the quota."""
    from caesar_rest import create_app

    app = create_app(_settings(tmp_path))
    root = Path(app.config["ROOT"])
    client = app.test_client()
    body = WatchedBody(_multipart(8 * QUOTA), root)
    answer = _chunked_upload(client, body)
    assert answer.status_code == 507, answer.get_json()
    assert "quota of 1048576 bytes" in answer.get_json()["message"]
    assert 0 < body.largest <= QUOTA, body.largest
    assert _parts(root) == [] and _stored(root) == []
    with session_scope(app.config["DATABASE_URL"]) as s:
        assert s.scalar(select(func.count()).select_from(File)) == 0


def test_quota_counts_what_is_stored_already(tmp_path):
    """600 KiB stored, 2 MiB more announced: refused from the Content-Length (the body is not needed to know; up to
    1 MiB of a body may be multipart framing, so only beyond that), while a file that fits exactly is taken."""
    from caesar_rest import create_app

    app = create_app(_settings(tmp_path))
    root = Path(app.config["ROOT"])
    client = app.test_client()
    upload(client, b"\x02" * (600 * 1024), "first.fits")
    body = WatchedBody(_multipart(2 * QUOTA), root)
    started = time.perf_counter()
    answer = client.post(f"{API}/upload", environ_overrides={
        "wsgi.input": body, "CONTENT_LENGTH": str(len(body.data.getvalue())),
        "CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}"})
    assert answer.status_code == 507 and answer.get_json()["used_bytes"] == 600 * 1024, answer.get_json()
    assert body.data.tell() == 0, "the body was read"
    assert time.perf_counter() - started < 5
    fits = upload(client, b"\x03" * (QUOTA - 600 * 1024), "rest.fits")
    assert fits["size_bytes"] == QUOTA - 600 * 1024
    assert _parts(root) == [] and len(_stored(root)) == 2
