"""A job directory as a streamed tar.gz: generated chunk by chunk, never written to disk or held whole."""
from __future__ import annotations

import os
import stat
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

BLOCK = tarfile.BLOCKSIZE


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


def stream_tar_gz(root: str | Path, prefix: str, level: int = 6, chunk: int = 1024 * 1024,
                  exclude: Iterable[str] = ()) -> Iterator[bytes]:
    """Yield a gzip-compressed POSIX tar of root, with members under prefix/."""
    root = Path(root)
    gz = zlib.compressobj(level, zlib.DEFLATED, 31)   # wbits 31: gzip container
    excluded = set(exclude)
    written = 0
    for path, arcname in _members(root, prefix, excluded):
        info = _tarinfo(path, arcname)
        if info is None:
            continue
        if info.type != tarfile.REGTYPE:
            header = info.tobuf(tarfile.PAX_FORMAT)
            written += len(header)
            yield gz.compress(header)
            continue
        try:
            fh = open(path, "rb")
        except OSError:
            continue
        with fh:
            # A file that grows while we read is cut at the size in its header; one that shrinks is padded.
            header = info.tobuf(tarfile.PAX_FORMAT)
            written += len(header) + info.size + (-info.size) % BLOCK
            out = gz.compress(header)
            if out:
                yield out
            remaining = info.size
            while remaining > 0:
                data = fh.read(min(chunk, remaining))
                if not data:
                    data = b"\0" * min(chunk, remaining)
                remaining -= len(data)
                out = gz.compress(data)
                if out:
                    yield out
            pad = (-info.size) % BLOCK
            if pad:
                yield gz.compress(b"\0" * pad)
    # End of archive: two zero blocks, then padding to a whole record as tar(1) writes it.
    written += 2 * BLOCK
    tail = 2 * BLOCK + (-written) % tarfile.RECORDSIZE
    yield gz.compress(b"\0" * tail) + gz.flush()
