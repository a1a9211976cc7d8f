"""Local backend: argv as a child process of the worker, in its own process group, in the job directory, inside
the bubblewrap sandbox (workers/sandbox.py) unless SANDBOX is none (unsafe: the job gets the worker's powers)."""
from __future__ import annotations

import ctypes
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..sandbox import Bind, Sandbox, SandboxError, SandboxSpec, Started, hand_over
from .base import EXITED, LOST, RUNNING, BackendBase, BackendError, BackendNotConfigured, BackendStatus, JobSpec

PR_SET_PDEATHSIG = 1
JOB_DIR = "/job"            # where a sandboxed app job sees its own directory
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _child_setup(memory_mb: int | None, cpu_seconds: int | None):
    def setup() -> None:
        # Die with the worker process that started us, so a killed worker leaves no orphan job behind.
        if _libc is not None:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if memory_mb:
            limit = int(memory_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if cpu_seconds:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    return setup


_SYSTEM_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
_SETPRIV = shutil.which("setpriv", path=_SYSTEM_PATH)
_PRLIMIT = shutil.which("prlimit", path=_SYSTEM_PATH)


def _launcher(memory_mb: int | None) -> list[str] | None:
    """Unsandboxed (SANDBOX none): the same parent-death signal and memory limit as _child_setup, set by
    util-linux's setpriv and prlimit exec'd in front of the command (same pid). No Python runs in the child, so
    subprocess uses vfork: a preexec_fn makes it fork the whole worker instead, ~10 ms a job on a 2-core VM
    against ~1 ms.
    None when the tools are missing (then _child_setup is used)."""
    if _libc is None or _SETPRIV is None or (memory_mb and _PRLIMIT is None):
        return None
    prefix = [_SETPRIV, "--pdeathsig", "KILL", "--"]
    if memory_mb and _PRLIMIT:
        limit = int(memory_mb) * 1024 * 1024
        prefix += [_PRLIMIT, f"--as={limit}:{limit}", "--"]
    return prefix


def _check_command(command: str, path: str, cwd: Path) -> None:
    """Raise FileNotFoundError / PermissionError as Popen would for a command it cannot execute: with a
    launcher in front, Popen itself succeeds and the launcher would only exit with 127 or 126."""
    if "/" in command:
        candidates = [command if os.path.isabs(command) else str(cwd / command)]
    else:
        candidates = [os.path.join(d or ".", command) for d in path.split(os.pathsep)]
    denied = False
    for candidate in candidates:
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return
            denied = True
        elif os.path.isdir(candidate):
            denied = True
    raise (PermissionError if denied else FileNotFoundError)(command)


def process_alive(pid: int, job_id: str | None = None) -> bool:
    """True if pid runs; with job_id, only if it is that job's process (guards against pid reuse)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            if fh.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False            # a zombie: dead, waiting for a parent (or an init) to reap it
    except (OSError, IndexError):
        pass
    if job_id is None:
        return True
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return f"CAESAR_JOB_ID={job_id}".encode() in fh.read().split(b"\0")
    except OSError:
        return False


def kill_group(pgid: int, grace: float) -> None:
    """SIGTERM the whole process group, then SIGKILL whatever is left after `grace` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class LocalBackend(BackendBase):
    name: ClassVar[str] = "local"
    blocking: ClassVar[bool] = True
    job_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.jobs_dir = Path(settings["JOBS_DIR"])
        self.grace = float(options.get("cancel_grace", settings.get("CANCEL_GRACE", 1.0)))
        self.procs: dict[str, subprocess.Popen] = {}
        self.started: dict[str, Started] = {}
        self.handed: dict[str, list[Path]] = {}        # directories given to the sandbox user, by handle
        self.host = socket.gethostname()
        try:
            self.sandbox = Sandbox(settings)
        except SandboxError as exc:
            raise BackendNotConfigured(str(exc)) from exc

    def health(self) -> None:
        """Jobs can start here: the job directory is writable and has room, and bubblewrap is installed. (The full
        sandbox check, a trial sandbox, is the worker's at start: /health runs in API processes too.)"""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(self.jobs_dir, os.W_OK):
            raise BackendError(f"{self.jobs_dir} is not writable")
        st = os.statvfs(self.jobs_dir)
        if st.f_bavail * st.f_frsize < 16 * 1024 * 1024:
            raise BackendError(f"{self.jobs_dir} has less than 16 MiB free")
        if self.sandbox.enabled and self.sandbox.bwrap is None:
            raise BackendError(f"bwrap (Debian package bubblewrap) is not installed on {self.host}: jobs cannot be "
                               "sandboxed")

    def check_sandbox(self) -> str:
        """A description of the sandbox jobs get; BackendError saying why when it cannot be set up."""
        try:
            return self.sandbox.check()
        except SandboxError as exc:
            raise BackendError(f"the job sandbox cannot be set up on {self.host}: {exc}") from exc

    def submit(self, job: JobSpec) -> str:
        workdir = Path(job.workdir)
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)
        host_task = job.options.get("host_task")
        if not self.sandbox.enabled:
            if host_task:
                raise BackendError("TES host-runtime executors run only in the sandbox, and SANDBOX is none here")
            return self._submit_unsandboxed(job, workdir)
        self.check_sandbox()
        if host_task:       # a TES executor: the task runner names its binds and environment
            binds = [Bind(*b) for b in host_task["binds"]]
            env = {"OMP_NUM_THREADS": str(max(1, int(job.cpus))), **job.env, "CAESAR_JOB_ID": job.job_id}
            cwd, network = host_task.get("cwd") or "/", bool(host_task.get("network"))
        else:
            binds, env, cwd, network = self._app_sandbox(job, workdir)
            try:
                _check_command(job.argv[0], env["PATH"], workdir)
            except FileNotFoundError as exc:
                raise BackendError(f"Command {job.argv[0]!r} not found on {self.host}") from exc
            except PermissionError as exc:
                raise BackendError(f"Command {job.argv[0]!r} is not executable on {self.host}") from exc
        handed = [Path(b.source) for b in binds if b.writable and Path(b.source).is_dir()] \
            if self.sandbox.privileged else []
        if self.sandbox.privileged:
            uid, gid = self.sandbox.uid, self.sandbox.gid
            for bind in binds:
                if bind.writable:
                    hand_over(Path(bind.source), uid, gid, skip=(workdir / "inputs",))
            if not host_task:
                _readable_inputs(workdir / "inputs", gid, self.sandbox.setfacl)
        spec = SandboxSpec(argv=list(job.argv), cwd=cwd, env=env, binds=binds, network=network,
                           limits=self.sandbox.limits(job.memory_mb))
        with open(workdir / "stdout.log", "ab") as out, open(workdir / "stderr.log", "ab") as err:
            try:
                started = self.sandbox.start(spec, subprocess.DEVNULL, out, err, job.job_id[:16])
            except FileNotFoundError as exc:
                raise BackendError(f"Command {job.argv[0]!r} not found on {self.host}") from exc
            except (SandboxError, OSError) as exc:
                raise BackendError(f"The job's sandbox did not start on {self.host}: {exc}") from exc
        handle = str(started.popen.pid)
        self.procs[handle] = started.popen
        self.started[handle] = started
        self.handed[handle] = handed
        return handle

    def _app_sandbox(self, job: JobSpec, workdir: Path) -> tuple[list[Bind], dict[str, str], str, bool]:
        """An app job: its directory read-write at JOB_DIR (not at its host path, whose parents would name ROOT,
        the owner and the job), its staged inputs read-only, HOME a scratch directory under tmp/ (removed before
        the job's end, so .cache/ and .config/ never reach the tarball). argv paths are relative to it."""
        (workdir / "tmp" / "home").mkdir(exist_ok=True)
        bindir = os.path.dirname(sys.executable)   # the venv's console scripts (caesar-sfinder...) come first
        env = {"PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin", "HOME": f"{JOB_DIR}/tmp/home", "LANG": "C.UTF-8",
               "TMPDIR": f"{JOB_DIR}/tmp", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": str(max(1, int(job.cpus))),
               **job.env, "CAESAR_JOB_ID": job.job_id}
        binds = [Bind(str(workdir), JOB_DIR, True)]
        if (workdir / "inputs").is_dir():
            binds.append(Bind(str(workdir / "inputs"), f"{JOB_DIR}/inputs"))
        return binds, env, JOB_DIR, bool(job.options.get("network"))

    def _submit_unsandboxed(self, job: JobSpec, workdir: Path) -> str:
        bindir = os.path.dirname(sys.executable)
        env = {"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
               "HOME": str(workdir / "tmp"), "LANG": os.environ.get("LANG", "C.UTF-8"), "TMPDIR": str(workdir / "tmp"),
               "MPLBACKEND": "Agg", "OMP_NUM_THREADS": str(max(1, int(job.cpus))),
               **job.env, "CAESAR_JOB_ID": job.job_id}
        with open(workdir / "stdout.log", "ab") as out, open(workdir / "stderr.log", "ab") as err:
            launcher = _launcher(job.memory_mb)
            try:
                if launcher is None:
                    proc = subprocess.Popen(job.argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=err, start_new_session=True, close_fds=True,
                                            # The job dies with its worker (pdeathsig), set in the child itself.
                                            preexec_fn=_child_setup(job.memory_mb, None))  # noqa: PLW1509
                else:
                    _check_command(job.argv[0], env["PATH"], workdir)
                    proc = subprocess.Popen([*launcher, *job.argv], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=err, start_new_session=True, close_fds=True)
            except FileNotFoundError as exc:
                raise BackendError(f"Command {job.argv[0]!r} not found on {self.host}") from exc
            except PermissionError as exc:
                raise BackendError(f"Command {job.argv[0]!r} is not executable on {self.host}") from exc
        handle = str(proc.pid)
        self.procs[handle] = proc
        return handle

    def poll(self, handle: str) -> BackendStatus:
        proc = self.procs.get(handle)
        if proc is None:
            return BackendStatus(LOST, reason=f"process {handle} is not a child of this worker")
        rc = proc.poll()
        if rc is None:
            return BackendStatus(RUNNING, pid=proc.pid, host=self.host)
        if handle in self.started and 128 < rc <= 128 + 64:
            rc = 128 - rc           # bwrap reports a command killed by signal N as 128 + N, as a shell does
        return BackendStatus(EXITED, exit_code=rc, pid=proc.pid, host=self.host)

    def wait(self, handle: str, seconds: float) -> None:
        """Return when the process has ended or after `seconds`, whichever comes first: the runner waits
        here instead of sleeping, so a job's end is noticed at once rather than up to JOB_POLL_INTERVAL later."""
        proc = self.procs.get(handle)
        if proc is None or proc.returncode is not None:
            return
        try:
            fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):           # no pidfd (kernel < 5.3, not Linux) or already reaped
            try:
                proc.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                pass
            return
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)      # a pidfd becomes readable when its process exits
            poller.poll(max(0, int(seconds * 1000)))
        finally:
            os.close(fd)

    def cancel(self, handle: str) -> None:
        proc = self.procs.get(handle)
        started = self.started.get(handle)
        if started is not None and started.groups is not None and proc is not None:
            # SIGTERM the job's own processes first: bwrap would die of it at once and SIGKILL them, no grace.
            for pid in started.groups.pids() - {proc.pid}:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                pass
        kill_group(int(handle), self.grace)
        if started is not None and started.groups is not None:
            started.groups.kill()
        if proc is not None:
            try:
                proc.wait(timeout=self.grace + 2)
            except subprocess.TimeoutExpired:
                proc.kill()

    def fetch_outputs(self, handle: str, dest: Path) -> None:
        """Outputs are already in the job directory."""

    def cleanup(self, handle: str) -> None:
        # The app's own background children must not outlive the job.
        try:
            os.killpg(int(handle), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        started = self.started.pop(handle, None)
        proc = self.procs.pop(handle, None)
        if proc is not None and proc.poll() is None:
            proc.wait(timeout=5)
        handed = self.handed.pop(handle, [])
        if started is not None:
            self.sandbox.release(started)
        for path in handed:         # what the job wrote becomes the service's again (readable by the API)
            hand_over(path, os.geteuid(), os.getegid(), skip=(path / "inputs",))


def _readable_inputs(inputs: Path, gid: int, setfacl: str) -> None:
    """Staged inputs are hard links to the uploads (mode 0440, the service's): an ACL entry lets the sandbox's
    group read them. Not a chgrp: the link is the upload itself, whose group other readers keep using (nginx's
    X-Accel-Redirect through the service's group, a container job reading the same upload meanwhile). The data
    directory stays closed to the sandbox's group (0750), so the entry opens the file only where it is bound."""
    if not inputs.is_dir():
        return
    paths = [str(path) for path in inputs.rglob("*")
             if not path.is_symlink() and path.is_file() and not os.lstat(path).st_mode & 0o004]
    for i in range(0, len(paths), 200):
        done = subprocess.run([setfacl, "-m", f"g:{gid}:r", "--", *paths[i:i + 200]], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise BackendError(f"the staged inputs could not be opened to the sandbox's group: "
                               f"{done.stderr.strip() or 'setfacl exited ' + str(done.returncode)}")
