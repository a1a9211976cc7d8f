"""The Slurm backend's "stage" working directory: the job's scratch copy made ready for the job's account, the
manifest the job script writes of its outputs on the node (size and sha256 of every file), and the copy back that
verifies each file against it before the scratch copy may go (issue 15: removed only after every output was
fetched and verified).

The manifest is two files the job script writes after the app, in the scratch directory, through part files
renamed when whole: SIZES (`find -printf '%s %P\\0'`) and SUMS (`sha256sum -z`, which leaves names unescaped).
Both present: the job reached its end and every file is checked. Either missing: the script never got there (the
job was cancelled, stopped at its time limit, or its node failed), and the outputs come back unverified, as they
are. stdout.log and stderr.log are written by slurmstepd, which may append its own lines after the script ended
(an OOM kill's, a cancel's): what the manifest measured must be their beginning.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import stat
from pathlib import Path

from .base import BackendError

SIZES = ".caesar-outputs.sizes"
SUMS = ".caesar-outputs.sha256"
NOT_OUTPUTS = ("inputs", "tmp")                 # top-level directories never copied back
LOGS = ("stdout.log", "stderr.log")             # slurmstepd's: they may grow after the manifest
OWN = (SIZES, SUMS, SIZES + ".part", SUMS + ".part")
_CHUNK = 1024 * 1024

log = logging.getLogger("caesar.backends.slurm")


# The end of a script that ran the app without exec (its status in $rc): that status again. A status above 128 is
# the signal that killed the app (as sh reports it), raised again so that Slurm records the signal as it does for
# an exec'ed app.
STATUS_LINES = [
    'if [ "$rc" -gt 128 ] && [ "$rc" -lt 160 ]; then trap - "$((rc - 128))"; kill -"$((rc - 128))" $$; fi',
    'exit "$rc"',
]


def manifest_lines() -> list[str]:
    """What the stage job script runs after the app (whose status is in $rc): the manifest of every regular file
    but inputs/, tmp/ and the manifest itself, nothing written to the job's logs; then the app's status
    (STATUS_LINES)."""
    prune = " -o ".join(f"-path ./{shlex.quote(d)} -prune" for d in NOT_OUTPUTS)
    skip = " ".join(f"! -path ./{shlex.quote(name)}" for name in OWN)
    files = f"find . {prune} -o -type f {skip}"
    return [
        "rc=$?",
        f"{{ {files} -printf '%s %P\\0' > {SIZES}.part &&",
        f"  {files} -print0 | xargs -0r sha256sum -z -- > {SUMS}.part &&",
        f"  mv -f {SUMS}.part {SUMS} && mv -f {SIZES}.part {SIZES}; }} </dev/null >/dev/null 2>&1",
        *STATUS_LINES,
    ]


def read_manifest(rundir: Path) -> dict[str, tuple[int, str]] | None:
    """{relative path: (size, sha256)} as the job wrote it on the node; None when it wrote none (see above)."""
    try:
        sizes = _read_own(rundir, SIZES)
        sums = _read_own(rundir, SUMS)
    except FileNotFoundError:
        return None
    found: dict[str, tuple[int, str]] = {}
    measured: dict[str, int] = {}
    for entry in filter(None, sizes.split(b"\0")):
        size, _, name = entry.partition(b" ")
        measured[os.fsdecode(name)] = int(size)
    for entry in filter(None, sums.split(b"\0")):
        digest, _, name = entry.partition(b"  ")
        rel = os.fsdecode(name).removeprefix("./")
        if rel not in measured or len(digest) != 64:
            raise BackendError(f"the job's output manifest in {rundir} is inconsistent at {rel!r}")
        found[rel] = (measured[rel], digest.decode())
    if set(found) != set(measured):
        missing = sorted(set(measured) - set(found))[0]
        raise BackendError(f"the job's output manifest in {rundir} has no sha256 of {missing!r}")
    return found


def copy_back(rundir: Path, dest: Path) -> int:
    """The outputs a staged job left in rundir into dest, each verified against the job's manifest when it wrote
    one; returns how many files were verified. A file that differs (size or sha256), or that the manifest lists and
    rundir no longer has, is BackendError naming it, and its copy is not kept in dest (the runner fetches again).

    The job's account owns rundir (and so does every other job of that account): walked through directory fds,
    every file opened with O_NOFOLLOW, so that a symlink, or a directory swapped for one meanwhile, never makes
    this worker copy a file of its own choosing into the outputs."""
    manifest = read_manifest(rundir)
    verified = 0
    for top, dirs, files, top_fd in os.fwalk(rundir, follow_symlinks=False):
        rel_dir = Path(top).relative_to(rundir)
        at_top = rel_dir == Path(".")
        if at_top:
            dirs[:] = [d for d in dirs if d not in NOT_OUTPUTS]
        (dest / rel_dir).mkdir(parents=True, exist_ok=True)
        for name in files:
            if at_top and name in OWN:
                continue
            rel = (rel_dir / name).as_posix()
            expected = manifest.pop(rel, None) if manifest is not None else None
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=top_fd)
            except OSError:
                continue        # a symlink (ELOOP), or gone: a listed one is named below
            with os.fdopen(fd, "rb") as src:
                if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                    continue
                _copy_checked(src, dest / rel_dir / name, rel, expected, rundir)
            if expected is not None:
                verified += 1
            elif manifest is not None:
                log.warning("staged output %s in %s was written after the job's manifest: copied unverified", rel,
                            rundir)
    if manifest:
        rel = sorted(manifest)[0]
        raise BackendError(f"staged output {rel!r} is listed in the job's manifest but is no longer a file in "
                           f"{rundir}")
    return verified


def _copy_checked(src, target: Path, rel: str, expected: tuple[int, str] | None, rundir: Path) -> None:
    """src into target through a part file, hashed on the way; kept only when it matches expected (size, sha256).
    A log may be longer than measured: its first `size` bytes must match."""
    partial = target.with_name(f".{target.name}.caesar-part")
    digest, copied = hashlib.sha256(), 0
    measured = expected[0] if expected is not None else None
    with open(partial, "wb") as out:
        for block in iter(lambda: src.read(_CHUNK), b""):
            out.write(block)
            if measured is not None and copied < measured:
                digest.update(block[:measured - copied])
            copied += len(block)
    if expected is not None:
        size, sha256 = expected
        grows = rel in LOGS
        if copied < size or (copied > size and not grows) or digest.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            got = f"{copied} bytes" if copied != size and not (grows and copied > size) else \
                f"sha256 {digest.hexdigest()}"
            want = f"{size} bytes" if got.endswith("bytes") else f"sha256 {sha256}"
            raise BackendError(f"staged output {rel!r} in {rundir} differs from what the job wrote on the node: "
                               f"{got} here, {want} in the job's manifest")
    os.replace(partial, target)


def _read_own(rundir: Path, name: str) -> bytes:
    fd = os.open(rundir / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise BackendError(f"the job's output manifest {rundir / name} is not a regular file")
        return fh.read()


def give_to(rundir: Path, uid: int, gid: int) -> None:
    """The job's account writes into its directory and reads its inputs. Staged inputs are hard links to the
    user's stored files (read-only to their owner): the job gets its own copies, the store is kept."""
    for path in (rundir, rundir / "tmp"):
        os.chown(path, uid, gid)
    inputs = rundir / "inputs"
    if not inputs.is_dir():
        return
    for path in sorted(inputs.rglob("*")):
        if path.is_dir():
            os.chown(path, uid, gid)
        elif path.is_file() and path.stat().st_uid != uid:
            copy = path.with_name(f".{path.name}.caesar-copy")
            shutil.copyfile(path, copy)
            os.chown(copy, uid, gid)
            os.chmod(copy, 0o440)
            os.replace(copy, path)
    os.chown(inputs, uid, gid)
