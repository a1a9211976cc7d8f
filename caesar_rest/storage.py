"""Files on disk: streamed uploads with checksums, safe names and paths, staging inputs into job directories."""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import uuid as uuidlib
from pathlib import Path
from typing import BinaryIO

from .checksums import BackgroundChecksums
from .errors import BadRequest, InsufficientStorage
from .sinks import WriteSink

USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
FORMAT_RE = re.compile(r"^[a-z0-9]{1,16}$")
COMPRESSED = ("gz", "fz", "bz2", "xz", "zst")


def user_dir(base: str | Path, owner: str) -> Path:
    """<base>/<owner>: owners are validated names, so this never leaves base."""
    if not USER_RE.match(owner):
        raise BadRequest(f"Invalid user name {owner!r}")
    return Path(base) / owner


def check_filename(name: str | None) -> str:
    """An uploaded file's name: a plain base name, or a 400 naming what is wrong."""
    if not name:
        raise BadRequest("The uploaded file has no file name")
    if "\x00" in name:
        raise BadRequest("The file name contains a NUL character")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".."):
        raise BadRequest(f"The file name {name!r} must be a plain name without directories or '..'")
    if any(ord(c) < 32 for c in name):
        raise BadRequest("The file name contains control characters")
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        raise BadRequest("The file name is longer than 255 bytes")
    return name


def file_format(name: str) -> str:
    """Extension, lower case; 'fits.gz' for compressed files; 'bin' without one."""
    parts = name.lower().rsplit(".", 2)
    if len(parts) == 1:
        return "bin"
    if parts[-1] in COMPRESSED and len(parts) == 3 and FORMAT_RE.match(parts[-2]):
        return f"{parts[-2]}.{parts[-1]}"
    return parts[-1] if FORMAT_RE.match(parts[-1]) else "bin"


def within(base: Path, candidate: str | Path) -> Path | None:
    """candidate resolved (symlinks too) if it lies inside base, else None."""
    try:
        real = Path(os.path.realpath(candidate))
        base_real = Path(os.path.realpath(base))
    except (OSError, ValueError):
        return None
    return real if real == base_real or base_real in real.parents else None


class UploadSink(WriteSink):
    """Where the file part of an upload goes (caesar_rest.multipart writes it here as it arrives): straight to
    the data directory under a temporary name, hashed on the way, so nothing is held in memory or copied twice.
    A failed write (disk full) or a file over `limit` stops the writing, not the reading: the request is read
    to its end and commit() reports the problem, so the client gets an answer rather than a reset."""

    def __init__(self, directory: Path, limit: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.uuid = uuidlib.uuid4().hex
        self.tmp_path = directory / f".upload-{self.uuid}.part"
        self._fh: BinaryIO = open(self.tmp_path, "wb", buffering=0)  # noqa: SIM115 (closed by commit/discard)
        self._sums = BackgroundChecksums()    # sha256 and CRC64NVME on the way in, on a thread of their own
        self.size = 0
        self.limit = limit
        self.error: OSError | None = None

    def write(self, data) -> int:
        n = len(data)
        self.size += n
        if self.error is not None or (self.limit is not None and self.size > self.limit):
            return n
        try:
            view = memoryview(data)
            while view:
                view = view[self._fh.write(view):]
        except OSError as exc:          # disk full: keep draining the request, report afterwards
            self.error = exc
            return n
        self._sums.update(data)
        return n

    def close(self) -> None:
        self._sums.finish()
        if not self._fh.closed:
            try:
                self._fh.close()
            except OSError as exc:
                self.error = self.error or exc

    def commit(self, final_path: Path) -> None:
        """Make the upload visible under its final name (atomic rename in the same directory)."""
        self.close()
        if self.error is not None:
            self.discard()
            if self.error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage("The data disk is full; the upload was not stored")
            raise self.error
        os.chmod(self.tmp_path, 0o440)
        os.replace(self.tmp_path, final_path)

    def discard(self) -> None:
        self.close()
        try:
            self.tmp_path.unlink()
        except FileNotFoundError:
            pass


def sha256_of(path: str | Path, chunk: int = 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def stage(src: str | Path, dest: Path) -> None:
    """Put an input into a job directory: a hard link when on the same filesystem, else a copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def remove_stale_uploads(data_dir: str | Path, older_than: float) -> int:
    """Delete part files of uploads that never finished (the API died mid-upload); returns how many."""
    import time

    cutoff = time.time() - older_than
    removed = 0
    for part in Path(data_dir).glob("*/.upload-*.part"):
        try:
            if part.stat().st_mtime <= cutoff:
                part.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed
