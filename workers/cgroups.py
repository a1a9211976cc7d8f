"""Per-job control groups for sandboxed jobs: a pids limit (a fork bomb stays inside) on cgroup v2 or v1.

RLIMIT_NPROC counts processes per real uid, and every job runs as the same sandbox user, so it cannot bound one
job. A control group can: each job gets one, with pids.max (and memory.max on v2), and its processes are put in
it before the first of them forks.

On v1 the worker's thread that starts a job moves itself into the job's group for the fork (`0` into `tasks`, then
back), so bubblewrap is born inside. Moving another process takes a global lock that waits out an RCU grace period,
5-11 ms a job on a 2-core VM; a thread moving itself skips it (kernels since 2022, measured on 6.18; an older one
takes the lock, no slower than before). Elsewhere (v2, or a worker that may not write its own group's `tasks`) the
job's first process is moved in after bwrap made it.

Which hierarchy is used is chosen once at start: cgroup2 when its `pids` controller can be enabled under the
parent directory, else the v1 `pids` hierarchy. The parent is SANDBOX_CGROUP when set, else a `caesar-jobs`
directory under the worker's own group (v1), or the worker's own group when it has no processes of its own (v2:
the "no internal processes" rule; under systemd, `Delegate=yes` with `DelegateSubgroup=`).
"""
from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


class CgroupError(Exception):
    """No per-job control group can be made here; the message says what is missing."""


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup filesystem."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fstype, _source, options = [*right.split(), "", ""][:3]
            if fstype in ("cgroup", "cgroup2"):
                found.append((left.split()[4], fstype, set(options.split(","))))
    return found


def _own_groups() -> dict[str, str]:
    """This process's group per v1 controller, and under "" its cgroup2 group."""
    groups: dict[str, str] = {}
    with open("/proc/self/cgroup", encoding="utf-8") as fh:
        for line in fh:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                groups[name] = path
    return groups


@dataclass
class JobGroups:
    """The control groups of one job (one directory on v2, one per controller on v1)."""

    dirs: list[Path]
    kill_file: Path | None              # v2's cgroup.kill
    hierarchies: list[tuple[str, Path]] = field(default_factory=list)   # v1: (controller, mount) a thread can enter

    @property
    def enterable(self) -> bool:
        return bool(self.hierarchies)

    @contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread inside the job's groups for the block: a process it forks then is born there (fork
        inherits the thread's groups under a read-side lock), and its cgroup namespace is rooted at the job's group.
        The way back is opened before the thread moves, so a thread that got in always gets out."""
        back = [os.open(_thread_group(controller, mount) / "tasks", os.O_WRONLY)
                for controller, mount in self.hierarchies]
        try:
            for directory in self.dirs:
                (directory / "tasks").write_text("0")       # 0: the writing thread itself
            yield
        finally:
            for fd in back:
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)

    def attach(self, *pids: int) -> None:
        for directory in self.dirs:
            for pid in pids:
                (directory / "cgroup.procs").write_text(str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.dirs:
            try:
                found |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return found - {os.getpid()}    # never the worker, whose thread is inside while it starts the job

    def kill(self) -> None:
        """SIGKILL every process left in the group (a job that left the process group is still here)."""
        if self.kill_file is not None:
            try:
                self.kill_file.write_text("1")
                return
            except OSError:
                pass
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left and remove the directories (an emptied group goes once its zombies are reaped)."""
        deadline = time.monotonic() + timeout
        for directory in self.dirs:
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    self.kill()
                    time.sleep(0.01)


class Cgroups:
    """Makes per-job groups under one parent; `Cgroups.detect(setting)` raises CgroupError saying what is missing."""

    def __init__(self, version: int, parents: dict[str, Path],
                 hierarchies: list[tuple[str, Path]] | None = None) -> None:
        self.version = version
        self.parents = parents          # v2: {"": dir}; v1: {"pids": dir}
        self.hierarchies = hierarchies or []    # v1, when this thread may enter a job's group: (controller, mount)

    @property
    def description(self) -> str:
        return f"cgroup v{self.version} at {', '.join(str(p) for p in self.parents.values())}"

    @classmethod
    def detect(cls, setting: str | None = None) -> Cgroups:
        mounts = _mounts()
        own = _own_groups()
        problems = []
        explicit = Path(setting) if setting and setting != "auto" else None
        v2 = next((m for m, fstype, _o in mounts if fstype == "cgroup2"), None)
        if v2 is not None and (explicit is None or explicit.is_relative_to(v2)):
            parent = explicit or Path(v2 + own.get("", "/"))
            try:
                return cls._v2(parent)
            except CgroupError as exc:
                problems.append(str(exc))
        else:
            problems.append("no cgroup2 filesystem is mounted" if v2 is None else f"{explicit} is not under {v2}")
        pids_mount = next((m for m, fstype, opts in mounts if fstype == "cgroup" and "pids" in opts), None)
        if pids_mount is not None and (explicit is None or explicit.is_relative_to(pids_mount)):
            parent = explicit or Path(pids_mount + own.get("pids", "/").rstrip("/")) / "caesar-jobs"
            try:
                parent.mkdir(exist_ok=True)
                probe = parent / f"probe-{os.getpid()}"
                probe.mkdir(exist_ok=True)
                hierarchies = [("pids", Path(pids_mount))]
                try:
                    with JobGroups([probe], None, hierarchies).entered():
                        pass
                except OSError:         # may not write its own group's tasks (a non-root worker): attach instead
                    hierarchies = []
                probe.rmdir()
                return cls(1, {"pids": parent}, hierarchies)
            except OSError as exc:
                problems.append(f"cgroup v1 pids: cannot make groups under {parent} ({exc.strerror})")
        else:
            problems.append("no cgroup v1 pids hierarchy is mounted" if pids_mount is None
                            else f"{explicit} is not under {pids_mount}")
        raise CgroupError("no per-job pids limit is possible: " + "; ".join(problems))

    @classmethod
    def _v2(cls, parent: Path) -> Cgroups:
        try:
            available = set((parent / "cgroup.controllers").read_text().split())
        except OSError as exc:
            raise CgroupError(f"cgroup v2: {parent} is not a control group ({exc.strerror})") from None
        if "pids" not in available:
            raise CgroupError(f"cgroup v2: the pids controller is not available in {parent} "
                              "(bound to a v1 hierarchy, or not delegated)")
        wanted = [c for c in ("pids", "memory") if c in available]
        enabled = set((parent / "cgroup.subtree_control").read_text().split())
        missing = [c for c in wanted if c not in enabled]
        if missing:
            try:
                (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
            except OSError as exc:
                raise CgroupError(f"cgroup v2: cannot enable {missing} for groups under {parent} ({exc.strerror}; "
                                  "a group with processes of its own cannot have child groups with controllers: "
                                  "set SANDBOX_CGROUP to a delegated, empty group)") from None
        return cls(2, {"": parent})

    def sweep(self) -> None:
        """Remove the empty groups of workers that died before removing them (named <worker pid>.<serial>.<job>)."""
        for parent in self.parents.values():
            for directory in parent.iterdir():
                owner = directory.name.split(".", 1)[0]
                if not directory.is_dir() or not owner.isdigit() or Path(f"/proc/{owner}").exists():
                    continue
                try:
                    directory.rmdir()           # refused (EBUSY) while a process is still in it
                except OSError:
                    pass

    def create(self, name: str, pids_max: int, memory_bytes: int | None) -> JobGroups:
        dirs = []
        try:
            for controller, parent in self.parents.items():
                directory = parent / name
                directory.mkdir()
                dirs.append(directory)
                if controller in ("", "pids"):
                    # An entered group also holds bwrap's outer process, which only waits: the job keeps pids_max.
                    (directory / "pids.max").write_text(str(pids_max + (1 if self.hierarchies else 0)))
                if self.version == 2 and memory_bytes and (directory / "memory.max").exists():
                    (directory / "memory.max").write_text(str(memory_bytes))
                    if (directory / "memory.swap.max").exists():
                        (directory / "memory.swap.max").write_text("0")
        except OSError:
            for directory in dirs:
                directory.rmdir()
            raise
        kill_file = dirs[0] / "cgroup.kill" if self.version == 2 else None
        return JobGroups(dirs, kill_file if kill_file is not None and kill_file.exists() else None, self.hierarchies)


def _thread_group(controller: str, mount: Path) -> Path:
    """The calling thread's own group in the v1 hierarchy of `controller` mounted at `mount`."""
    with open("/proc/thread-self/cgroup", encoding="utf-8") as fh:
        for line in fh:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return mount / path.lstrip("/")
    raise FileNotFoundError(f"this thread is in no {controller} group")
