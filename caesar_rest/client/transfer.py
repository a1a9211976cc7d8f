"""Streamed transfers: a multipart upload body read from disk block by block, a download written as it arrives,
both reporting progress; and resumable (tus 1.0) uploads, their URLs kept per file so that a later run resumes."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx

#: progress(done_bytes, total_bytes or None): called after each block.
Progress = Callable[[int, "int | None"], None]
BLOCK = 1024 * 1024


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


class MultipartUpload:
    """The body of POST /upload: field `file` (the file, read in blocks) and an optional `tag`, with its exact
    length known ahead (the service, and uWSGI behind nginx, want a Content-Length, not a chunked body)."""

    def __init__(self, path: Path, tag: str | None, progress: Progress | None = None) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.progress = progress
        self.boundary = f"caesar-{uuid.uuid4().hex}"
        parts = b""
        if tag is not None:
            parts += (f'--{self.boundary}\r\nContent-Disposition: form-data; name="tag"\r\n\r\n').encode()
            parts += tag.encode("utf-8") + b"\r\n"
        parts += (f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; '
                  f'filename="{_quote(path.name)}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
        self.head = parts
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def length(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        done = 0
        with open(self.path, "rb") as fh:
            while block := fh.read(BLOCK):
                done += len(block)
                yield block
                if self.progress:
                    self.progress(done, self.size)
        if done != self.size:
            raise OSError(f"{self.path} changed size while it was being uploaded ({self.size} -> {done} bytes)")
        yield self.tail


def filename_of(response: httpx.Response) -> str | None:
    """The file name a download's Content-Disposition gives (filename* first), without any directory part."""
    header = response.headers.get("content-disposition", "")
    match = re.search(r"filename\*=UTF-8''([^;]+)", header, re.IGNORECASE)
    name = unquote(match.group(1)) if match else None
    if name is None:
        match = re.search(r'filename="?([^";]+)"?', header, re.IGNORECASE)
        name = match.group(1) if match else None
    if name is None:
        return None
    name = os.path.basename(name.replace("\\", "/"))
    return name if name not in ("", ".", "..") else None


def save_stream(response: httpx.Response, dest: Path, progress: Progress | None = None) -> int:
    """Write a streamed answer to dest (through dest.part, renamed once whole); returns the bytes written."""
    length = response.headers.get("content-length")
    total = int(length) if length and length.isdigit() else None
    part = dest.with_name(dest.name + ".part")
    done = 0
    try:
        with open(part, "wb") as fh:
            for block in response.iter_bytes(BLOCK):       # decoded only by a Content-Encoding, never a .tar.gz
                fh.write(block)
                done += len(block)
                if progress:
                    progress(response.num_bytes_downloaded, total)
        if total is not None and response.num_bytes_downloaded != total:
            raise OSError(f"the download of {dest.name} ended after {response.num_bytes_downloaded} of {total} bytes")
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return done


# ---- resumable uploads (tus 1.0) ---------------------------------------------------------------------------------
# A service that offers them answers OPTIONS <api>/uploads with a Tus-Version header (caesar_rest/api/tus.py). The
# uploader creates the upload, sends the file in chunks at Upload-Offset (each with its sha1 in Upload-Checksum), and
# keeps the upload's URL in the user's config directory per file (its path, size and mtime): a later run with the
# same file asks the server where it stopped and goes on from there. Written on httpx here, not with tuspy: the
# client already speaks to the service through one httpx.Client (auth, timeouts, errors), and tus is a few headers.
TUS_PATH = "/uploads"
TUS = {"Tus-Resumable": "1.0.0"}
TUS_CHUNK = 16 * 1024 * 1024


def resumable_endpoint(http: httpx.Client, api: str) -> str | None:
    """The tus endpoint of the service, or None when it offers no resumable uploads (an older service)."""
    try:
        answer = http.options(api + TUS_PATH, headers=TUS)
    except httpx.HTTPError:
        return None
    if answer.status_code in (200, 204) and "tus-version" in answer.headers:
        return api + TUS_PATH
    return None


class ResumeBook:
    """Where the URLs of unfinished uploads are kept, one per (service, file path, size, mtime): a JSON file,
    rewritten whole through a temporary file (uploads.json in the config directory by default)."""

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            from .profile import config_dir

            path = config_dir() / "uploads.json"
        self.path = path

    @staticmethod
    def key(api: str, file: Path) -> str:
        st = file.stat()
        return f"{api}|{file.resolve()}|{st.st_size}|{st.st_mtime_ns}"

    def _read(self) -> dict[str, str]:
        try:
            found = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def _write(self, entries: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def get(self, key: str) -> str | None:
        return self._read().get(key)

    def put(self, key: str, url: str) -> None:
        self._write({**self._read(), key: url})

    def forget(self, key: str) -> None:
        entries = self._read()
        if entries.pop(key, None) is not None:
            self._write(entries)


def tus_metadata(name: str, tag: str | None) -> str:
    pairs = {"filename": name, **({"tag": tag} if tag is not None else {})}
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode('ascii')}" for k, v in pairs.items())


def chunk_body(data: bytes, start: int, total: int, progress: Progress | None) -> Iterator[bytes]:
    """A chunk in blocks, reporting the whole file's progress as each block goes out."""
    view = memoryview(data)
    for at in range(0, len(data), BLOCK):
        yield bytes(view[at:at + BLOCK])
        if progress:
            progress(start + min(at + BLOCK, len(data)), total)


def sha1_checksum(data: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")
