"""Host-runtime launcher of TES executors (TES_HOST_RUNTIME): the local backend runs this file as
`python -I workers/tes_launcher.py exec SPEC.json` (workers/tes.py writes the spec). It builds a private mount
namespace showing the host's own filesystem with the task directories mounted at their paths, chroots into it,
opens the executor's stdin/stdout/stderr files and exec()s the command unchanged, so the command's process is
the job's process (no shell is added). This gives executors the paths they were promised; it is not a security
sandbox (the local backend never was one). Standard library only: it runs before any project import.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import sys

SETUP_FAILED = 125          # the launcher's exit status when the executor could not be set up (docker's too)
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18


def _mount(libc, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = (lambda v: v.encode() if v is not None else None)
    if libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or fstype} on {target}: {os.strerror(err)}")


def _populate(libc, host: str, new: str, targets: set[str]) -> None:
    """Mirror host directory `host` into `new`, except for the task directories and the way down to them."""
    prefix = host.rstrip("/")
    for name in sorted(os.listdir(host)):
        here, there = f"{prefix}/{name}", os.path.join(new, name)
        if here in targets:
            continue
        on_the_way = any(t.startswith(here + "/") for t in targets)
        if os.path.islink(here):
            if on_the_way:
                raise OSError(errno.ELOOP, f"a task directory lies under {here}, a symbolic link on this host")
            os.symlink(os.readlink(here), there)
        elif on_the_way:
            os.mkdir(there)
            _populate(libc, here, there, targets)
        else:
            if os.path.isdir(here):
                os.mkdir(there)
            else:
                open(there, "w").close()
            _mount(libc, here, there, None, MS_BIND | MS_REC)


def _enter_task_fs(spec: dict) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWNS if uid == 0 else CLONE_NEWNS | CLONE_NEWUSER) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"no private mount namespace for the executor ({os.strerror(err)}); the host runtime "
                           "needs root or unprivileged user namespaces")
    if uid != 0:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as fh:
                fh.write(text)
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)     # nothing we mount leaks back to the host
    root = spec["sysroot"]
    _mount(libc, "tmpfs", root, "tmpfs", 0, "mode=0755")
    mounts: dict[str, str] = spec["mounts"]
    _populate(libc, "/", root, set(mounts))
    for target in sorted(mounts):
        os.makedirs(root + target, exist_ok=True)
        _mount(libc, mounts[target], root + target, None, MS_BIND | MS_REC)
    os.chroot(root)
    os.chdir(spec.get("workdir") or "/")


def _redirect(spec: dict) -> None:
    for fd, key, flags in ((0, "stdin", os.O_RDONLY), (1, "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                           (2, "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        if spec.get(key):
            opened = os.open(spec[key], flags | os.O_CLOEXEC, 0o644)
            os.dup2(opened, fd)
            os.close(opened)


def launch(spec_path: str) -> int:
    """Enter the task's filesystem and exec the command; returns only on failure."""
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    try:
        _enter_task_fs(spec)
        _redirect(spec)
    except Exception as exc:
        reason = f"{exc.__class__.__name__}: {exc}"
        with open(spec["status"], "w", encoding="utf-8") as fh:
            fh.write(reason)
        print(f"caesar-rest TES: executor setup failed: {reason}", file=sys.stderr, flush=True)
        return SETUP_FAILED
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, dict(os.environ))
    except FileNotFoundError:
        print(f"{argv[0]}: command not found", file=sys.stderr, flush=True)
        return 127
    except OSError as exc:
        print(f"{argv[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        return 126
    return 126


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "exec":
        sys.exit("usage: tes_launcher.py exec SPEC.json")
    sys.exit(launch(sys.argv[2]))
