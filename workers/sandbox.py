"""The bubblewrap sandbox of every job process on a worker host: a SandboxSpec in, one bwrap argv out, started.

What a job sees: the system's read-only directories (/usr, /etc, the /bin and /lib links), the interpreter and
the registered apps' code read-only (derived from sys.base_prefix, sys.prefix and the app package, never the
project directory: it holds config/ and, under `make run`, ROOT), SANDBOX_READ_ONLY_PATHS, its own binds (the
job directory read-write, staged inputs read-only), a private /tmp, and its own /proc in a new pid namespace.
Its network namespace has only a loopback of its own unless the spec asks for the host's network.

Who it runs as: a root worker runs bubblewrap privileged (it can reach every bind source, whatever the modes of
the directories above it), and util-linux's setpriv, inside the new namespaces, becomes SANDBOX_USER with no
supplementary groups, no capabilities (bounding set emptied) and no new privileges before exec()ing the command.
A worker that is not root runs bubblewrap in a user namespace of its own: the job keeps the worker's uid and has
no capabilities; SANDBOX_USER cannot be honoured.

Limits: RLIMIT_NOFILE, RLIMIT_FSIZE and (when the app declares memory) RLIMIT_AS, set with prlimit(2) on the
namespace's init while bwrap holds it (no launcher exec()ed in front: each costs a millisecond), a pids limit (and
memory.max on cgroup v2) by a control group of the job's own (workers/cgroups.py). Its processes are in the group
before any of them forks: on v1 bwrap is born there (the starting thread enters the group for the fork), else
bwrap waits on --block-fd, after telling its child's pid on --info-fd, until the worker has moved that child in.
A worker that is not root and has no control group to make children in uses RLIMIT_NPROC instead, set inside the
job's own user namespace: since Linux 5.14 it counts per (user namespace, uid), so it bounds that one job.
"""
from __future__ import annotations

import contextlib
import functools
import grp
import itertools
import json
import logging
import os
import pwd
import resource
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .cgroups import CgroupError, Cgroups, JobGroups

SYSTEM_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
APP_PACKAGES = ("caesar_apps",)
log = logging.getLogger("caesar.sandbox")         # the registered apps' code (console scripts caesar-sfinder...)


# A job's control group is <worker pid>.<serial>.<job>: a TES task's executors share the job id and are started one
# after the other, while the group of the one before may still wait for its background removal.
_GROUP_SERIAL = itertools.count(1)


class SandboxError(Exception):
    """The sandbox cannot be set up here, or one job's sandbox could not start; the message says why."""


@dataclass(frozen=True)
class Bind:
    source: str
    dest: str
    writable: bool = False


@dataclass(frozen=True)
class Limits:
    pids: int = 512
    open_files: int | None = 1024
    file_bytes: int | None = None
    memory_mb: int | None = None


@dataclass
class SandboxSpec:
    argv: list[str]
    cwd: str
    env: dict[str, str]
    binds: list[Bind] = field(default_factory=list)     # in order: a read-only bind may sit inside a writable one
    network: bool = False
    limits: Limits = field(default_factory=Limits)


@dataclass
class Started:
    popen: subprocess.Popen
    groups: JobGroups | None


def _user(value: Any) -> tuple[int, int]:
    """SANDBOX_USER: a user name, a uid, or "uid:gid"."""
    text = str(value)
    if ":" in text:
        uid, gid = text.split(":", 1)
        return int(uid), int(gid)
    try:
        entry = pwd.getpwnam(text) if not text.isdigit() else pwd.getpwuid(int(text))
    except KeyError:
        raise SandboxError(f"SANDBOX_USER {text!r} is not a user on this host") from None
    return entry.pw_uid, entry.pw_gid


def code_paths(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Read-only directories a job needs beyond the system's: the interpreter's prefix, the virtual environment
    and the apps' package (an editable install keeps it in the project directory, which is not shown whole)."""
    paths = [sys.base_prefix, sys.prefix, *_package_locations(APP_PACKAGES)]
    paths.extend(extra)
    seen: list[str] = []
    for path in (os.path.realpath(p) for p in paths):
        if os.path.exists(path) and not any(path == s or path.startswith(s + "/") for s in seen):
            seen = [s for s in seen if not s.startswith(path + "/")] + [path]
    return seen


@functools.cache
def _package_locations(names: tuple[str, ...]) -> list[str]:
    """Where the venv's interpreter, isolated (-I: no working directory, no PYTHON* variables) as the apps' console
    scripts run it, finds the apps' packages. Not this process's own find_spec: a worker started in another
    checkout would find that checkout's copy on its sys.path and bind the wrong directory."""
    probe = ("import importlib.util, json, sys\n"
             "out = []\n"
             "for name in sys.argv[1:]:\n"
             "    spec = importlib.util.find_spec(name)\n"
             "    out += list(spec.submodule_search_locations or []) if spec else []\n"
             "print(json.dumps(out))")
    # The venv's own interpreter, as the console scripts' #! names it: under uWSGI sys.executable is uwsgi.
    python = next((str(c) for c in (Path(sys.prefix) / "bin" / "python3", Path(sys.prefix) / "bin" / "python")
                   if c.is_file()), sys.executable)
    try:
        done = subprocess.run([python, "-I", "-c", probe, *names], capture_output=True, text=True,
                              timeout=30, check=True, cwd="/")
        return [str(p) for p in json.loads(done.stdout)]
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise SandboxError(f"could not find the apps' code ({', '.join(names)}) for the sandbox: {exc}") from exc


class Sandbox:
    """One per worker process: the settings' sandbox, checked once, then used for every job."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        mode = str(settings.get("SANDBOX") or "bwrap").lower()
        if mode not in ("bwrap", "none"):
            raise SandboxError(f"SANDBOX must be bwrap or none, not {mode!r}")
        self.enabled = mode == "bwrap"
        self.privileged = os.geteuid() == 0
        self.uid, self.gid = _user(settings.get("SANDBOX_USER") or "nobody") if self.privileged else \
            (os.geteuid(), os.getegid())
        self._setpriv_ids = (_files_name("passwd", self.uid), _files_name("group", self.gid))
        self.pids_max = int(settings.get("SANDBOX_PIDS_MAX") or 512)
        self.open_files = settings.get("SANDBOX_MAX_OPEN_FILES")
        self.file_bytes = settings.get("SANDBOX_MAX_FILE_BYTES")
        self.bwrap = shutil.which("bwrap", path=SYSTEM_PATH)
        self.setpriv = shutil.which("setpriv", path=SYSTEM_PATH)
        self.prlimit = shutil.which("prlimit", path=SYSTEM_PATH)
        self.setfacl = shutil.which("setfacl", path=SYSTEM_PATH) or "setfacl"   # opens staged uploads to the job
        self.code = code_paths(list(settings.get("SANDBOX_READ_ONLY_PATHS") or []))
        self.hidden = _service_config()
        self.cgroup_setting = settings.get("SANDBOX_CGROUP") or "auto"
        self.cgroups: Cgroups | None = None
        self.nproc_limit = False        # no cgroup, not root: RLIMIT_NPROC in the job's own user namespace
        self._checked = False
        self._detected = False          # the control groups (or RLIMIT_NPROC) chosen: a trial sandbox may start
        self._lock = threading.Lock()

    def limits(self, memory_mb: int | None) -> Limits:
        return Limits(pids=self.pids_max, open_files=int(self.open_files) if self.open_files else None,
                      file_bytes=int(self.file_bytes) if self.file_bytes else None, memory_mb=memory_mb)

    # ---- start-up check ------------------------------------------------------------------------------------
    def check(self) -> str:
        """Raise SandboxError saying why jobs cannot be sandboxed here; return a one-line description."""
        if not self.enabled:
            return "SANDBOX is none: jobs run unsandboxed, with the worker's powers (unsafe)"
        with self._lock:
            if not self._checked:
                self._check()
                self._checked = True
        who = f"uid {self.uid} gid {self.gid}" if self.privileged else \
            f"the worker's uid {self.uid} in a user namespace (the worker is not root: SANDBOX_USER is not used)"
        how = "RLIMIT_NPROC in the job's user namespace" if self.nproc_limit or self.cgroups is None else \
            self.cgroups.description
        return f"jobs run in bubblewrap as {who}, pids limit {self.pids_max} by {how}"

    def _check(self) -> None:
        tools = [("bwrap", self.bwrap), ("setpriv", self.setpriv), ("prlimit", self.prlimit)]
        if self.privileged:
            tools.append(("setfacl", shutil.which("setfacl", path=SYSTEM_PATH)))
        missing = [name for name, path in tools if path is None]
        if missing:
            raise SandboxError(f"{', '.join(missing)} not found in {SYSTEM_PATH} (Debian packages bubblewrap, "
                               "util-linux, acl); SANDBOX: none runs jobs unsandboxed (unsafe)")
        if self.privileged and self.uid == 0:
            raise SandboxError("SANDBOX_USER is root: jobs must run as an unprivileged user")
        try:
            self.cgroups = Cgroups.detect(self.cgroup_setting)
            self.cgroups.sweep()
        except CgroupError as exc:
            if self.privileged or self.cgroup_setting != "auto" or not _nproc_per_user_namespace():
                raise SandboxError(str(exc)) from None
            self.nproc_limit = True
        self._detected = True
        spec = SandboxSpec(argv=["true"], cwd="/", env={"PATH": SYSTEM_PATH})
        try:
            started = self.start(spec, subprocess.DEVNULL, subprocess.DEVNULL, subprocess.PIPE, "check")
        except (SandboxError, OSError) as exc:
            raise SandboxError(f"a trial sandbox did not start: {exc}") from None
        _out, err = started.popen.communicate(timeout=30)
        self.release(started)
        if started.popen.returncode != 0:
            text = (err or b"").decode(errors="replace").strip()
            raise SandboxError(f"a trial sandbox failed (exit status {started.popen.returncode}): {text}")

    # ---- one job ---------------------------------------------------------------------------------------------
    def argv(self, spec: SandboxSpec, info_fd: int, block_fd: int) -> list[str]:
        assert self.bwrap and self.setpriv and self.prlimit
        limits = spec.limits
        # --die-with-parent: both of bwrap's processes get SIGKILL when the worker dies (PR_SET_PDEATHSIG).
        out = [self.bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
               "--unshare-cgroup-try"]
        if not spec.network:
            out.append("--unshare-net")
        if not self.privileged:
            out += ["--unshare-user", "--cap-drop", "ALL"]
        for directory in SYSTEM_DIRS:
            if os.path.islink(directory):
                out += ["--symlink", os.readlink(directory), directory]
            elif os.path.isdir(directory):
                out += ["--ro-bind", directory, directory]
        out += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
        # bwrap makes the directories above a bind 0700 (root's): the job, another user, must pass them.
        for parent in _parents([*self.code, *(b.dest for b in spec.binds)]):
            out += ["--perms", "0755", "--dir", parent]
        for path in self.code:
            out += ["--ro-bind", path, path]
        for path in self.hidden:           # the service's settings and env files, where jobs would see them
            if any(path.startswith(d + "/") for d in (*SYSTEM_DIRS, *self.code)):
                out += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
        for n, bind in enumerate(spec.binds):
            # A bind inside an earlier one (tools under a TES task's /tmp): its missing parents made 0755 there,
            # which bwrap would make 0700, closed to the job's user.
            for parent in _inner_parents(bind.dest, [b.dest for b in spec.binds[:n]]):
                out += ["--perms", "0755", "--dir", parent]
            out += ["--bind" if bind.writable else "--ro-bind", bind.source, bind.dest]
        out += ["--chdir", spec.cwd, "--info-fd", str(info_fd), "--block-fd", str(block_fd), "--"]
        if self.privileged:
            user, group = self._setpriv_ids
            out += [self.setpriv, f"--reuid={user}", f"--regid={group}", "--clear-groups",
                    "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
        elif self.nproc_limit:
            out += [self.prlimit, f"--nproc={limits.pids}:{limits.pids}", "--"]
        return out + list(spec.argv)

    def start(self, spec: SandboxSpec, stdin: Any, stdout: IO | int, stderr: IO | int, name: str) -> Started:
        """Start spec's command in a sandbox of its own; the Popen's pid is bwrap's, its process group the job's."""
        if not self._detected:
            self.check()
        groups = None if self.cgroups is None else \
            self.cgroups.create(f"{os.getpid()}.{next(_GROUP_SERIAL)}.{name}", spec.limits.pids,
                                spec.limits.memory_mb * 1024 * 1024 if spec.limits.memory_mb else None)
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        try:
            argv = self.argv(spec, info_w, block_r)
            try:
                # bwrap is born in the job's group when this thread can enter it (v1), else its child is moved in below.
                with groups.entered() if groups is not None and groups.enterable else contextlib.nullcontext():
                    # No preexec_fn: subprocess keeps vfork (a preexec_fn forks the whole worker, ~10 ms a job).
                    popen = subprocess.Popen(argv, env=spec.env, stdin=stdin, stdout=stdout, stderr=stderr,
                                             start_new_session=True, close_fds=True, umask=0o022,
                                             pass_fds=(info_w, block_r))
            finally:
                os.close(info_w)
                os.close(block_r)
            info = _read_info(info_r)
            if info is None:            # bwrap stopped before its child was made: its reason is on stderr
                popen.wait()
                raise SandboxError(f"bubblewrap could not set up the sandbox (exit status {popen.returncode})")
            try:
                # The namespace's init only: every process of the job descends from it. (bwrap's outer process only
                # waits; each move into a v1 group costs an RCU grace period, several ms on a busy VM.)
                child = int(info["child-pid"])
                for which, value in _rlimits(spec.limits):
                    resource.prlimit(child, which, (value, value))
                if groups is not None and not groups.enterable:
                    groups.attach(child)
            except OSError:
                popen.kill()
                popen.wait()
                raise
            os.write(block_w, b"x")
        except BaseException:
            if groups is not None:
                groups.remove()
            raise
        finally:
            os.close(info_r)
            os.close(block_w)
        return Started(popen, groups)

    def release(self, started: Started) -> None:
        """After the job's process ended: whatever is left in its group is killed now, and the group is removed
        by a background thread (an emptied group goes once the kernel has let its last task go; the job's end
        need not wait for that)."""
        groups = started.groups
        if groups is None:
            return
        groups.kill()
        threading.Thread(target=_remove_quietly, args=(groups,), name="cgroup-remove", daemon=True).start()


def _rlimits(limits: Limits) -> list[tuple[int, int]]:
    return [(which, int(value)) for which, value in (
        (resource.RLIMIT_NOFILE, limits.open_files), (resource.RLIMIT_FSIZE, limits.file_bytes),
        (resource.RLIMIT_AS, limits.memory_mb * 1024 * 1024 if limits.memory_mb else None)) if value]


def _service_config() -> list[str]:
    """What of the service's configuration lies in a directory jobs see (/etc): the directory of CAESAR_CONFIG
    (the systemd units keep settings.yml and the env files with their secrets in /etc/caesar-rest), else the file."""
    found = []
    for given in (os.environ.get("CAESAR_CONFIG"), "/etc/caesar-rest"):
        if not given or not os.path.exists(given):
            continue
        path = os.path.realpath(given)
        parent = os.path.dirname(path)
        found.append(parent if os.path.isfile(path) and parent not in SYSTEM_DIRS else path)
    return sorted(set(found))


def _files_name(database: str, number: int) -> str:
    """How setpriv is told the sandbox's uid or gid: the name when /etc/<database> has it and NSS asks the files
    first, else the number. setpriv looks a number up as a name first (getpwnam("65534")), which misses in the
    files and loads the next NSS module (libnss_systemd and its libraries): 0.4-0.5 ms of every job."""
    try:
        with open("/etc/nsswitch.conf", encoding="utf-8") as fh:
            sources = next((line.split(":", 1)[1].split() for line in fh if line.startswith(f"{database}:")), [])
        if not sources or sources[0] not in ("files", "compat"):
            return str(number)
        with open(f"/etc/{database}", encoding="utf-8") as fh:
            names = [f[0] for f in (line.split(":") for line in fh) if len(f) > 3 and f[2] == str(number)]
    except OSError:
        return str(number)
    if not names or names[0].isdigit() or not names[0]:
        return str(number)
    try:       # what setpriv will find for that name must be this very id
        found = pwd.getpwnam(names[0]).pw_uid if database == "passwd" else grp.getgrnam(names[0]).gr_gid
    except KeyError:
        return str(number)
    return names[0] if found == number else str(number)


def _nproc_per_user_namespace() -> bool:
    """RLIMIT_NPROC counts per user namespace since Linux 5.14 (ucounts)."""
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (5, 14)


def _remove_quietly(groups: JobGroups) -> None:
    try:
        groups.remove(timeout=30)
    except OSError:
        log.warning("could not remove the job's control group %s", groups.dirs, exc_info=True)


def _parents(paths: list[str]) -> list[str]:
    """Directories above the bind targets that the sandbox's own root must make, outermost first."""
    found: set[str] = set()
    for path in paths:
        parent = os.path.dirname(path.rstrip("/"))
        while parent not in ("/", "", "/tmp") and not any(parent == d or parent.startswith(d + "/")
                                                           for d in SYSTEM_DIRS):
            found.add(parent)
            parent = os.path.dirname(parent)
    return sorted(found, key=lambda p: (p.count("/"), p))


def _inner_parents(dest: str, earlier: list[str]) -> list[str]:
    """The directories between dest and the innermost earlier bind holding it, outermost first."""
    holders = [e.rstrip("/") for e in earlier if dest.startswith(e.rstrip("/") + "/")]
    if not holders:
        return []
    top = max(holders, key=len)
    out, parent = [], os.path.dirname(dest.rstrip("/"))
    while parent not in (top, "/") and parent.startswith(top + "/"):
        out.append(parent)
        parent = os.path.dirname(parent)
    return out[::-1]


def _read_info(fd: int) -> dict[str, Any] | None:
    data = b""
    while not data.rstrip().endswith(b"}"):
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        data += chunk
    return json.loads(data)


def hand_over(path: Path, uid: int, gid: int, skip: tuple[Path, ...] = ()) -> None:
    """chown a tree without following links (a job's links may point anywhere), leaving `skip` alone."""
    if os.lstat(path).st_uid != uid or os.lstat(path).st_gid != gid:
        os.chown(path, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(path):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            target = here / name
            if target in skip:
                continue
            try:
                st = os.lstat(target)
                if st.st_uid != uid or st.st_gid != gid:
                    os.chown(target, uid, gid, follow_symlinks=False)
            except FileNotFoundError:
                pass
