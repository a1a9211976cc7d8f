"""What every TES transfer shares, whatever its scheme: TransferError naming the URL and the reason, and the metered
copy (stop checks between chunks, bytes charged against TES_MAX_INPUT_BYTES, byte counts compared at the end), so
that a transfer either completes or raises, never a silent partial success."""
from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from caesar_rest import errors
from caesar_rest.egress import redact

CHUNK = 1024 * 1024


class TransferError(errors.TransferError):
    """A transfer failed; str() names the URL (credentials redacted) and why."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{redact(url)}: {reason}")
        self.url = url
        self.reason = reason


class TransferStopped(TransferError):
    """The task was canceled (or ran out of time) while data was moving."""


def scheme_of(url: str) -> str:
    return "file" if url.startswith("/") else urlsplit(url).scheme.lower()


def safe_rel(url: str, rel: str) -> str:
    """A relative path from a remote listing, refused when it would leave the destination."""
    clean = posixpath.normpath(rel.lstrip("/"))
    if clean in ("", ".") or clean.startswith("..") or "\x00" in clean:
        raise TransferError(url, f"refusing the entry {rel!r}: it leaves the directory")
    return clean


def join_url(url: str, rel: str) -> str:
    from urllib.parse import quote

    if scheme_of(url) == "file" and url.startswith("/"):
        return url.rstrip("/") + "/" + rel
    return url.rstrip("/") + "/" + quote(rel)


def walk_files(root: Path) -> Iterator[tuple[Path, str]]:
    """Regular files under root with their relative paths; symbolic links are not followed."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            yield path, path.relative_to(root).as_posix()


class MeteredCopy:
    """The copy loop of one task's transfers: should_stop() is checked between chunks so a cancel interrupts a
    transfer, and the input being fetched may bring at most max_input bytes (None: no cap)."""

    def __init__(self, should_stop: Callable[[], bool], max_input: int | None) -> None:
        self.should_stop = should_stop
        self.max_input = max_input
        self._left: int | None = None            # bytes the input being fetched may still bring

    def _check_stop(self, url: str) -> None:
        if self.should_stop():
            raise TransferStopped(url, "stopped: the task was canceled or ran out of time")

    def _count(self, url: str, size: int | None) -> None:
        """Charge size bytes (or a size announced ahead) to the input being fetched; over its cap, stop."""
        if self._left is None or size is None:
            return
        if size > self._left:
            raise TransferError(url, f"the input is larger than TES_MAX_INPUT_BYTES ({self.max_input} bytes)")

    def _copy(self, url: str, chunks: Iterable[bytes], dest: Path) -> int:
        dest.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with open(dest, "wb") as out:
            for chunk in chunks:
                self._check_stop(url)
                self._take(url, len(chunk))
                out.write(chunk)
                written += len(chunk)
        return written

    def _take(self, url: str, size: int) -> None:
        if self._left is not None:
            self._count(url, size)
            self._left -= size

    @staticmethod
    def _chunks(fh: BinaryIO) -> Iterator[bytes]:
        read = getattr(fh, "read1", fh.read)      # what has arrived: a trickling server cannot delay a cancel
        while True:
            chunk = read(CHUNK)
            if not chunk:
                return
            yield chunk

    def _expect(self, url: str, got: int, expected: int | None) -> int:
        if expected is not None and got != expected:
            raise TransferError(url, f"incomplete transfer: {got} of {expected} bytes")
        return got
