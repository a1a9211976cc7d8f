"""The end-to-end checksums every stored file carries, local or S3: sha256 and CRC64NVME (the CRC S3 itself uses;
computed by us with awscrt, never trusted from the server). Uploads, staged inputs and job outputs all use these."""
from __future__ import annotations

import base64
import hashlib
import threading
from pathlib import Path
from typing import Any

CHUNK = 1024 * 1024

try:
    from awscrt.checksums import crc64nvme as _crc64nvme
except ImportError:                         # the s3 / batch / test extras: without it files carry sha256 only
    _crc64nvme = None


def require_crc() -> None:
    if _crc64nvme is None:
        raise ImportError("CRC64NVME checksums need awscrt: pip install 'caesar-rest[s3]'")


def crc64nvme_b64(value: int) -> str:
    """The CRC as S3 shows it (x-amz-checksum-crc64nvme): base64 of the 8 big-endian bytes."""
    return base64.b64encode(value.to_bytes(8, "big")).decode("ascii")


class Checksums:
    """sha256 and CRC64NVME of a byte stream, fed in blocks."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._crc = 0
        self.size = 0

    def update(self, data: bytes) -> None:
        self._sha.update(data)
        if _crc64nvme is not None:
            self._crc = _crc64nvme(data, self._crc)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def crc64nvme(self) -> str | None:
        return crc64nvme_b64(self._crc) if _crc64nvme is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {"size_bytes": self.size, "sha256": self.sha256, "crc64nvme": self.crc64nvme}


class BackgroundChecksums(Checksums):
    """Checksums computed on a thread of their own while the caller goes on writing: sha256 releases the GIL
    on big blocks, so hashing runs beside the socket reads and disk writes instead of after each of them.
    update() takes blocks that do not change afterwards (bytes, or memoryviews of bytes); at most `depth`
    blocks wait (the memory held is bounded). Reading a checksum waits for the thread to finish."""

    _DONE = object()

    def __init__(self, depth: int = 8, start: Checksums | None = None) -> None:
        import queue

        super().__init__()
        if start is not None:          # going on from the checksums of the bytes before (a resumable upload's)
            self._sha, self._crc, self.size = start._sha.copy(), start._crc, start.size
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="checksums", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._queue.get()) is not self._DONE:
            if self._error is None:
                try:
                    Checksums.update(self, block)
                except BaseException as exc:
                    self._error = exc

    def update(self, data) -> None:
        self._queue.put(data)

    def finish(self) -> None:
        if self._thread.is_alive():
            self._queue.put(self._DONE)
            self._thread.join()
        if self._error is not None:
            raise self._error

    @property
    def sha256(self) -> str:
        self.finish()
        return super().sha256

    @property
    def crc64nvme(self) -> str | None:
        self.finish()
        return super().crc64nvme


def checksums_of(path: str | Path) -> Checksums:
    sums = Checksums()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            sums.update(block)
    return sums


def mismatch(label: str, expected_sha256: str | None, expected_crc: str | None, actual: Checksums) -> str | None:
    """A message naming the file when its content no longer matches the recorded checksums, else None."""
    wrong = []
    if expected_sha256 and actual.sha256 != expected_sha256:
        wrong.append(f"sha256 {expected_sha256[:12]}… (now {actual.sha256[:12]}…)")
    if expected_crc and actual.crc64nvme is not None and actual.crc64nvme != expected_crc:
        wrong.append(f"CRC64NVME {expected_crc} (now {actual.crc64nvme})")
    if not wrong:
        return None
    return f"{label} no longer matches its recorded {' and '.join(wrong)}; it changed in storage since upload"


def output_manifest(workdir: Path,
                    skip: tuple[str, ...] = ("inputs", "tmp", "caesar_job.json")) -> list[dict[str, Any]]:
    """size, sha256 and CRC64NVME of every regular file a job left in its directory (inputs excluded)."""
    files = []
    for path in sorted(p for p in workdir.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(workdir)
        if rel.parts[0] in skip:
            continue
        files.append({"path": rel.as_posix(), **checksums_of(path).as_dict()})
    return files
