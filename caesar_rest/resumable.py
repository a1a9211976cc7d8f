"""Resumable uploads, the tus 1.0 protocol's server side (https://tus.io/protocols/resumable-upload), with its
creation, creation-with-upload, termination, checksum and expiration extensions. HTTP-free: caesar_rest/api/tus.py
maps requests onto these functions.

An upload is a row (models.Upload) and a part file, `.tus-<id>.part` in its owner's data directory. Every PATCH
appends at the offset the row records, under an exclusive lock on the part file (a second writer is refused, never
interleaved); bytes the row does not record (a writer that died between its write and its commit, a chunk whose
checksum failed) are cut off before the next write. The row's declared length counts against the owner's quota
from creation on. Once whole, the part file is hashed (sha256, CRC64NVME) and registered as a File of the same
uuid by the same code as POST /upload, in one transaction with the upload's completion. The reaper removes expired
uploads with their part files.

Written here rather than taken from a library: the Python tus servers on PyPI are whole frameworks' plugins
(Django, FastAPI) or keep state in their own files; the protocol itself is a handful of headers over the storage,
quota and checksum code this service already has."""
from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import storage
from .checksums import CHUNK, BackgroundChecksums, Checksums
from .errors import (
    BadRequest,
    ChecksumMismatch,
    Conflict,
    Gone,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    UnsupportedFormat,
)
from .jobs import UUID_HEX_RE
from .models import Upload, utcnow
from .sinks import WriteSink

TUS_VERSION = "1.0.0"
EXTENSIONS = ("creation", "creation-with-upload", "termination", "checksum", "expiration")
#: Upload-Checksum algorithms (the checksum extension's names): sha1 is the one every tus client offers.
CHECKSUMS: dict[str, Callable[[], Any]] = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "md5": hashlib.md5}
CHUNK_CONTENT_TYPE = "application/offset+octet-stream"
READ = CHUNK


def part_path(data_dir: str | Path, owner: str, upload_id: str) -> Path:
    return storage.user_dir(data_dir, owner) / f".tus-{upload_id}.part"


def parse_metadata(header: str | None) -> dict[str, str]:
    """Upload-Metadata: comma-separated `key base64value` pairs (a key may come without a value)."""
    found: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (header or "").split(","))):
        key, _, value = item.partition(" ")
        if not key or " " in value.strip():
            raise BadRequest(f"Upload-Metadata: {item!r} is not 'key base64-value'", field="Upload-Metadata")
        if key in found:
            raise BadRequest(f"Upload-Metadata: the key {key!r} comes twice", field="Upload-Metadata")
        try:
            found[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8") if value.strip() else ""
        except (binascii.Error, UnicodeDecodeError):
            raise BadRequest(f"Upload-Metadata: the value of {key!r} is not base64 of UTF-8 text",
                             field="Upload-Metadata") from None
    return found


def encode_metadata(upload: Upload) -> str:
    pairs = {"filename": upload.filename, **({"tag": upload.tag} if upload.tag is not None else {})}
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode('ascii')}" for k, v in pairs.items())


def parse_checksum(header: str | None) -> tuple[str, Any, bytes] | None:
    """Upload-Checksum: `algorithm base64digest` -> (name, hasher, digest); None without the header."""
    if header is None:
        return None
    name, _, value = header.strip().partition(" ")
    if name not in CHECKSUMS:
        raise BadRequest(f"Upload-Checksum: algorithm {name!r} is not supported; use one of "
                         f"{', '.join(CHECKSUMS)}", field="Upload-Checksum")
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except binascii.Error:
        raise BadRequest("Upload-Checksum: the digest is not base64", field="Upload-Checksum") from None
    hasher = CHECKSUMS[name]()
    if len(digest) != hasher.digest_size:
        raise BadRequest(f"Upload-Checksum: a {name} digest is {hasher.digest_size} bytes, not {len(digest)}",
                         field="Upload-Checksum")
    return name, hasher, digest


def header_int(value: str | None, name: str, minimum: int = 0) -> int:
    """A tus number header (Upload-Length, Upload-Offset): digits only."""
    if value is None:
        raise BadRequest(f"The {name} header is required", field=name)
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) < minimum:
        raise BadRequest(f"The {name} header must be a whole number of bytes, at least {minimum}, not {value!r}",
                         field=name)
    return int(text)


def expires_header(when: datetime) -> str:
    """An RFC 9110 date (Upload-Expires)."""
    from email.utils import format_datetime

    return format_datetime(when.replace(tzinfo=UTC), usegmt=True)


def new_expiry(settings: Mapping[str, Any], now: datetime | None = None) -> datetime:
    return (now or utcnow()) + timedelta(seconds=float(settings["TUS_EXPIRE_AFTER"]))


def check_new(settings: Mapping[str, Any], length: int, metadata: Mapping[str, str]) -> tuple[str, str, str | None]:
    """What a creation request gives, checked as POST /upload checks its file part: (name, format, tag)."""
    limit = int(settings["MAX_UPLOAD_BYTES"])
    if length > limit:
        raise PayloadTooLarge(f"The file is larger than the {limit} bytes this server accepts", limit_bytes=limit)
    if length == 0:
        raise BadRequest("The file is empty (Upload-Length 0)", field="Upload-Length")
    name = storage.check_filename(metadata.get("filename") or metadata.get("name"))
    fmt = storage.file_format(name)
    allowed = settings.get("ALLOWED_FORMATS")
    if allowed and fmt not in allowed:
        raise UnsupportedFormat(f"Files of format {fmt!r} are not accepted; allowed: {', '.join(allowed)}",
                                format=fmt)
    tag = metadata.get("tag")
    if tag is not None and (len(tag) > 255 or "\x00" in tag):
        raise BadRequest("'tag' must be at most 255 characters without NUL", field="tag")
    return name, fmt, tag


def reserved_bytes(s: Session, owner: str, exclude: str | None = None) -> int:
    """Bytes the owner's unfinished uploads have declared: they count against the quota until done or expired."""
    from sqlalchemy import func

    query = select(func.coalesce(func.sum(Upload.length), 0)).where(Upload.owner == owner,
                                                                    Upload.completed_at.is_(None))
    if exclude is not None:
        query = query.where(Upload.id != exclude)
    return int(s.scalar(query) or 0)


def find(s: Session, owner: str, upload_id: str, settings: Mapping[str, Any]) -> Upload:
    """The owner's upload (404 for anyone else's or an unknown id); past its expiry it is removed: 410."""
    if not UUID_HEX_RE.fullmatch(upload_id):
        raise NotFound(f"No upload {upload_id!r}")
    upload = s.get(Upload, upload_id)
    if upload is None or upload.owner != owner:
        raise NotFound(f"No upload {upload_id!r}")
    if upload.completed_at is None and upload.expires_at <= utcnow():
        remove(s, settings, upload)
        s.commit()
        raise Gone(f"The upload {upload_id} expired at {upload.expires_at.isoformat()}Z and was removed; start "
                   "it again")
    return upload


def remove(s: Session, settings: Mapping[str, Any], upload: Upload) -> None:
    """The upload's row and part file (a completed upload's file stays: it is a File now)."""
    part_path(settings["DATA_DIR"], upload.owner, upload.id).unlink(missing_ok=True)
    s.delete(upload)


def remove_expired(settings: Mapping[str, Any], s: Session) -> int:
    """Unfinished uploads past their expiry, removed with their part files (the reaper), and part files without
    a row older than STALE_UPLOAD_AFTER (an API killed between making one and recording its upload); returns how
    many of either."""
    import time

    gone = s.scalars(select(Upload).where(Upload.completed_at.is_(None), Upload.expires_at <= utcnow())
                     .limit(1000)).all()
    for upload in gone:
        remove(s, settings, upload)
    cutoff = time.time() - float(settings["STALE_UPLOAD_AFTER"])
    orphans = 0
    for part in Path(settings["DATA_DIR"]).glob("*/.tus-*.part"):
        upload_id = part.name[len(".tus-"):-len(".part")]
        try:
            if part.stat().st_mtime <= cutoff and s.get(Upload, upload_id) is None:
                part.unlink()
                orphans += 1
        except FileNotFoundError:
            pass
    return len(gone) + orphans


@contextmanager
def writing(path: Path) -> Iterator[BinaryIO]:
    """The part file open for writing under an exclusive lock; a second writer gets 409 at once."""
    try:
        fh = open(path, "r+b", buffering=0)  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise Gone("The upload's data is gone (removed or expired); start it again") from None
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict("Another request is writing to this upload; send one PATCH at a time") from None
        yield fh
    finally:
        fh.close()


# The sha256 and CRC64NVME of each upload's recorded bytes, as far as this process hashed them while its PATCHes
# came in: the last PATCH then makes the file without reading the whole part file again (64 GiB took it tens of
# seconds). hashlib's state cannot leave the process, so a PATCH served by another process (uWSGI's threads, several
# hosts) breaks the chain and the last one hashes the file as before; a tus client on one keep-alive connection
# (gunicorn keeps it in one process) keeps it whole. The state of the bytes [0, offset) never goes stale: recorded
# bytes are never rewritten, and an entry counts only for the offset it reached.
_RUNNING: OrderedDict[str, Checksums] = OrderedDict()
_RUNNING_LOCK = threading.Lock()
RUNNING_KEPT = 256


def take_running(upload_id: str, offset: int) -> Checksums | None:
    """The checksums of the upload's first `offset` bytes, if this process made them (taken: one PATCH at a time)."""
    if offset == 0:
        return Checksums()
    with _RUNNING_LOCK:
        sums = _RUNNING.pop(upload_id, None)
    return sums if sums is not None and sums.size == offset else None


def keep_running(upload_id: str, sums: Checksums) -> None:
    with _RUNNING_LOCK:
        _RUNNING[upload_id] = sums
        _RUNNING.move_to_end(upload_id)
        while len(_RUNNING) > RUNNING_KEPT:
            _RUNNING.popitem(last=False)


def drop_running(upload_id: str) -> None:
    with _RUNNING_LOCK:
        _RUNNING.pop(upload_id, None)


def append(fh: BinaryIO, offset: int, room: int, read: Callable[[int], bytes], expected: int | None,
           checksum: tuple[str, Any, bytes] | None, sums: Checksums | None = None) -> tuple[int, bool]:
    """Write a PATCH body at `offset` (bytes past it, left by an unrecorded write, are cut first). Returns (bytes
    kept, whether the body came whole). A body past `room` is refused (413) and nothing of it kept; a checksum
    that does not match keeps nothing (460); a body cut short keeps what came unless a checksum was declared.
    `sums` is fed every block written: it covers offset + bytes kept exactly when nothing was cut back."""
    os.ftruncate(fh.fileno(), offset)
    fh.seek(offset)
    written = 0
    whole = True
    hasher = checksum[1] if checksum else None
    try:
        while True:
            block = read(READ)
            if not block:
                break
            if written + len(block) > room:
                os.ftruncate(fh.fileno(), offset)
                raise PayloadTooLarge(f"The chunk goes past the upload's length: {room} bytes were left",
                                      left_bytes=room)
            view = memoryview(block)
            while view:
                view = view[fh.write(view):]
            if hasher is not None:
                hasher.update(block)
            if sums is not None:
                sums.update(block)
            written += len(block)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            os.ftruncate(fh.fileno(), offset)
            raise InsufficientStorage("The data disk is full; the chunk was not stored") from exc
        # Any other OSError is the connection's (a reset under gunicorn or uWSGI): as below.
        if checksum:
            os.ftruncate(fh.fileno(), offset)
            raise
        os.ftruncate(fh.fileno(), offset + written)
        return written, False
    except Exception:
        # The client went away mid-body (the server's read failed): what came is kept, as tus asks, unless
        # a checksum was declared for the whole chunk.
        if checksum:
            os.ftruncate(fh.fileno(), offset)
            raise
        return written, False
    if expected is not None and written < expected:
        whole = False
    if checksum is not None and (not whole or checksum[1].digest() != checksum[2]):
        os.ftruncate(fh.fileno(), offset)
        if whole:
            raise ChecksumMismatch(f"The chunk's {checksum[0]} is not the one in Upload-Checksum; nothing of it "
                                   "was kept: send it again", algorithm=checksum[0])
        return 0, False
    return written, whole


class PartSink(WriteSink):
    """A finished part file as POST /upload's sinks present themselves to files._register: its uuid, size and
    checksums (read from the file, on a thread of their own). commit() links it under its final name: the part
    file stays until the File is recorded (a refusal then, over quota say, loses nothing; the caller removes it
    after)."""

    def __init__(self, path: Path, upload_id: str, sums: Checksums | None = None) -> None:
        self.tmp_path = path
        self.uuid = upload_id
        self.error: OSError | None = None
        if sums is not None and sums.size == path.stat().st_size:      # hashed on the way in (take_running)
            self._sums, self.size = sums, sums.size
            return
        self._sums = BackgroundChecksums()
        size = 0
        with open(path, "rb", buffering=0) as fh:
            while block := fh.read(CHUNK):
                self._sums.update(block)
                size += len(block)
        self._sums.finish()
        self.size = size

    def commit(self, final_path: Path) -> None:
        os.link(self.tmp_path, final_path)

    def discard(self) -> None:
        """The part file stays: the upload may be completed again (a quota error may clear)."""


def blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(CHUNK):
            yield block
