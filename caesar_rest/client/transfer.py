"""Streamed transfers: a multipart upload body read from disk block by block, a download written as it arrives,
both reporting progress; and the seam for resumable uploads (none offered by the service yet)."""
from __future__ import annotations

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


# ---- resumable uploads: the seam ----------------------------------------------------------------------------------
# The service offers only the one-request POST /upload today. Resumable uploads are planned as tus 1.0 under the
# API prefix (issue 18). A server offering them answers OPTIONS <api>/uploads with a Tus-Version header:
# resumable_endpoint() finds that, and Client.upload() asks it first; a tus uploader (creation + PATCH at
# Upload-Offset, its upload URL kept in the user's config directory per file so a later run resumes) plugs in there.
TUS_PATH = "/uploads"


def resumable_endpoint(http: httpx.Client, api: str) -> str | None:
    """The tus endpoint of the service, or None when it offers no resumable uploads (today's service)."""
    try:
        answer = http.options(api + TUS_PATH, headers={"Tus-Resumable": "1.0.0"})
    except httpx.HTTPError:
        return None
    if answer.status_code in (200, 204) and "tus-version" in answer.headers:
        return api + TUS_PATH
    return None
