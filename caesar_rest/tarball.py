"""A job directory as a streamed tar.gz: generated chunk by chunk, never written to disk or held whole.

Compressed with Intel's ISA-L (the `isal` package's isal_zlib): standard gzip, which any gunzip reads, about 15 to
25 times faster than zlib's level 6 here for a size within 2% of it (README, Benchmarks). One stream on one
thread: a download is one HTTP response, and the server has other requests for the other cores."""
from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from isal import isal_zlib

BLOCK = tarfile.BLOCKSIZE
#: ISA-L's levels: 0 (fastest; on data that barely compresses it may come out bigger) to 3 (smallest).
ISAL_LEVELS = range(4)


def isal_level(level: int) -> int:
    """OUTPUT_GZIP_LEVEL as ISA-L's level: 0-3 as they are; 4-9, zlib's scale in a configuration written before
    the change, count as 3 (ISA-L's smallest, which is within 2% of zlib's 6); below 0 is 0."""
    return min(max(int(level), 0), ISAL_LEVELS[-1])


def _members(root: Path, prefix: str, exclude: set[str]) -> Iterator[tuple[Path, str]]:
    """(path, archive name) pairs in a stable order; symlinks are stored as links, never followed."""
    yield root, prefix
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if str(rel / d) not in exclude and (rel / d).parts[0] not in exclude)
        for name in sorted(dirnames) + sorted(filenames):
            relname = rel / name
            if relname.parts[0] in exclude:
                continue
            yield Path(dirpath) / name, f"{prefix}/{relname.as_posix()}"


def _tarinfo(path: Path, arcname: str) -> tarfile.TarInfo | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:        # removed while we walked
        return None
    info = tarfile.TarInfo(arcname)
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    info.uid, info.gid = st.st_uid, st.st_gid
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    else:
        return None                  # sockets, fifos, devices: not job output
    return info


def _file_blocks(path: Path, chunk: int) -> Callable[[], Iterator[bytes]]:
    def blocks() -> Iterator[bytes]:
        try:
            fh = open(path, "rb")  # noqa: SIM115 (the with below: an open error is a skip, a read error is not)
        except OSError:
            return
        with fh:
            while data := fh.read(chunk):
                yield data
    return blocks


def stream_tar_gz(root: str | Path, prefix: str, level: int = 3, chunk: int = 1024 * 1024,
                  exclude: Iterable[str] = (), extra: Mapping[str, bytes] | None = None) -> Iterator[bytes]:
    """Yield a gzip-compressed POSIX tar of root, with members under prefix/. extra: top-level files given as
    bytes, which stand in for root's files of the same names."""
    root = Path(root)
    extra = dict(extra or {})

    def members() -> Iterator[tuple[tarfile.TarInfo, Callable[[], Iterator[bytes]] | None]]:
        for path, arcname in _members(root, prefix, set(exclude) | set(extra)):
            info = _tarinfo(path, arcname)
            if info is not None:
                yield info, _file_blocks(path, chunk) if info.type == tarfile.REGTYPE else None
            if path == root:
                yield from files_in_memory(prefix, extra, int(info.mtime) if info is not None else 0)

    return tar_gz(members(), level)


def _once(data: bytes) -> Callable[[], Iterator[bytes]]:
    return lambda: iter((data,))


def files_in_memory(prefix: str, files: Mapping[str, bytes],
                    mtime: int) -> Iterator[tuple[tarfile.TarInfo, Callable[[], Iterator[bytes]]]]:
    """Members for files held in memory."""
    for name, data in sorted(files.items()):
        info = tarfile.TarInfo(f"{prefix}/{name}")
        info.size, info.mode, info.mtime = len(data), 0o644, mtime
        yield info, _once(data)


def tar_gz(members: Iterable[tuple[tarfile.TarInfo, Callable[[], Iterator[bytes]] | None]],
           level: int = 3) -> Iterator[bytes]:
    """A streamed tar.gz of (header, opener of the content's blocks) pairs, from any source (disk, S3). level:
    ISA-L's (isal_level maps a zlib-scale one)."""
    gz = isal_zlib.compressobj(isal_level(level), isal_zlib.DEFLATED, 31)   # wbits 31: gzip container
    written = 0
    for info, opener in members:
        header = info.tobuf(tarfile.PAX_FORMAT)
        size = info.size if info.type == tarfile.REGTYPE else 0
        written += len(header) + size + (-size) % BLOCK
        out = gz.compress(header)
        if out:
            yield out
        if opener is None:
            continue
        # A file that grows while we read is cut at the size in its header; one that shrinks is padded.
        remaining = size
        for block in opener():
            data = block[:remaining]
            remaining -= len(data)
            out = gz.compress(data)
            if out:
                yield out
            if remaining <= 0:
                break
        while remaining > 0:
            zeros = min(remaining, 1024 * 1024)
            remaining -= zeros
            yield gz.compress(b"\0" * zeros)
        pad = (-size) % BLOCK
        if pad:
            yield gz.compress(b"\0" * pad)
    # End of archive: two zero blocks, then padding to a whole record as tar(1) writes it.
    written += 2 * BLOCK
    tail = 2 * BLOCK + (-written) % tarfile.RECORDSIZE
    yield gz.compress(b"\0" * tail) + gz.flush()
