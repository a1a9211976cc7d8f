"""TES task runner: stage inputs, run the executors in sequence through the job's backend, upload outputs,
and record the TES logs (job.extra["tes_logs"]) and the failure kind (job.extra["tes_error"]).

Every task directory (volumes, the directories of inputs, outputs, workdirs and std streams: see
caesar_rest.tes_task.mount_points) is a directory under <job dir>/fs/ mounted at its path for each executor.
On the container backend an executor is a container (image, argv = command). On the host runtime
(TES_HOST_RUNTIME, off unless enabled) the local backend runs it in the job sandbox (workers/sandbox.py), which
binds those directories at their paths, through workers/tes_launcher.py.
"""
from __future__ import annotations

import errno
import glob
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from caesar_rest import storage
from caesar_rest.db import session_scope
from caesar_rest.models import (ABORTED, CANCELED, FAILURE, RUNNING, STARTED, SUCCESS, TIMED_OUT, Job,
                                utcnow)
from caesar_rest.jobs import transition
from caesar_rest.tes import EXECUTOR, SYSTEM, rfc3339
from caesar_rest.tes_task import DIRECTORY, WILDCARD_RE, mount_points, norm

from .backends import get_backend
from .backends.base import QUEUED, BackendError, JobSpec, poll_in_slot
from .backends.base import RUNNING as B_RUNNING
from .tes_launcher import SANDBOX_LAUNCHER, SANDBOX_PYTHON, SETUP_FAILED, STATUS_PATH
from .transfer import TransferError, TransferStopped, Transfers

log = logging.getLogger("caesar.tes")
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LAUNCHER = Path(__file__).resolve().with_name("tes_launcher.py")


def run_task(runner, job: Job) -> str:
    """Entry from Runner.run once the job is claimed (STARTED). Returns the final job state."""
    return TaskRun(runner, job).run()


class TaskRun:
    """One TES task on one worker: the per-task state around the backend's submit/poll/cancel."""

    def __init__(self, runner, job: Job) -> None:
        self.runner = runner
        self.settings = runner.settings
        self.url = runner.url
        self.job_id = job.id
        self.owner = job.owner
        self.backend_name = job.backend
        self.doc: dict[str, Any] = dict((job.extra or {}).get("tes") or {})
        self.spec: dict[str, Any] = dict(job.spec or {})
        self.jobdir = Path(job.workdir)
        self.fs = self.jobdir / "fs"
        self.meta = self.jobdir / ".tes"
        self.mounts = mount_points(self.doc)
        old = (job.extra or {}).get("tes_logs") or {}
        self.logs: dict[str, Any] = {"system_logs": list(old.get("system_logs") or []), "executors": [], "outputs": []}
        self.time_limit = float(self.spec.get("time_limit") or self.settings["DEFAULT_TIME_LIMIT"])
        self.canceled = threading.Event()
        self.finished = threading.Event()
        self.poll_interval = float(self.settings["JOB_POLL_INTERVAL"])

    # ---- driving -----------------------------------------------------------------------------------------------
    def run(self) -> str:
        watcher = threading.Thread(target=self._watch, name=f"tes-watch-{self.job_id[:8]}", daemon=True)
        watcher.start()
        try:
            return self._run()
        except Exception as exc:           # a bug must still end the task, with the reason
            log.exception("TES task %s failed in the runner", self.job_id)
            return self._end(FAILURE, f"Internal error running the task: {exc.__class__.__name__}: {exc}", SYSTEM)
        finally:
            self.finished.set()
            watcher.join(timeout=5)

    def _watch(self) -> None:
        """Heartbeats and the cancel flag while the task runs, transfers included."""
        beat_every = float(self.settings["HEARTBEAT_INTERVAL"])
        last_beat = 0.0
        while not self.finished.wait(self.poll_interval):
            try:
                with session_scope(self.url) as s:
                    if s.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)):
                        self.canceled.set()
                    if time.monotonic() - last_beat >= beat_every:
                        last_beat = time.monotonic()
                        s.execute(update(Job).where(Job.id == self.job_id).values(heartbeat_at=utcnow()))
            except Exception:
                log.warning("TES task %s: heartbeat failed", self.job_id, exc_info=True)

    def _run(self) -> str:
        try:
            backend = get_backend(self.settings, self.backend_name)
        except BackendError as exc:
            return self._end(ABORTED, f"Backend {self.backend_name!r} unavailable on this worker: {exc}", SYSTEM)
        try:
            self._layout()
        except OSError as exc:
            return self._end(ABORTED, f"Preparing the task directories failed: {exc}", SYSTEM)
        problem = self._check_disk()
        if problem:
            return self._end(ABORTED, problem, SYSTEM)
        transfers = Transfers(self.settings, self.owner, should_stop=self.canceled.is_set)
        for i, item in enumerate(self.doc.get("inputs") or []):
            if self.canceled.is_set():
                break
            try:
                self._stage(transfers, item)
            except TransferStopped:
                break
            except (TransferError, OSError) as exc:
                return self._end(ABORTED, f"Input inputs[{i}] ({item['path']}) could not be staged: {exc}", SYSTEM)
        if self.canceled.is_set():
            return self._end(CANCELED, "Task canceled by user before its executors ran")
        with session_scope(self.url) as s:
            transition(s, self.job_id, RUNNING, "Task is running", from_states=(STARTED,), run_date=utcnow())

        deadline = time.monotonic() + self.time_limit
        failure: tuple[str, str, int | None] | None = None      # (kind, message, exit code)
        for i, executor in enumerate(self.doc["executors"]):
            if self.canceled.is_set():
                break
            outcome, detail, rc = self._run_executor(backend, i, executor, deadline)
            if outcome in ("canceled", "timeout", "system"):
                failure = (outcome, detail, rc)
                break
            if rc != 0 and not executor.get("ignore_error"):
                failure = ("executor", detail, rc)
                break
            if rc != 0:
                self.logs["system_logs"].append(f"{detail} (ignore_error: continuing)")
        if self.canceled.is_set() or (failure and failure[0] == "canceled"):
            return self._end(CANCELED, "Task canceled by user")

        upload_problems = self._upload_outputs(transfers, strict=failure is None)
        if self.canceled.is_set():
            return self._end(CANCELED, "Task canceled by user while its outputs were uploaded")
        if failure is not None:
            kind, message, rc = failure
            if kind == "timeout":
                return self._end(TIMED_OUT, message, EXECUTOR, exit_status=rc)
            if kind == "executor":
                return self._end(FAILURE, message, EXECUTOR, exit_status=rc)
            return self._end(FAILURE, message, SYSTEM, exit_status=rc)
        if upload_problems:           # already in system_logs, one line each
            return self._end(FAILURE, "; ".join(upload_problems), SYSTEM, log_it=False)
        return self._end(SUCCESS, "Task complete", exit_status=0)

    # ---- layout and inputs ----------------------------------------------------------------------------------------
    def host_path(self, path: str) -> Path:
        return self.fs / norm(path).lstrip("/")

    def _layout(self) -> None:
        for directory in (self.jobdir, self.fs, self.meta):
            directory.mkdir(parents=True, exist_ok=True)
        for mount in self.mounts:
            self.host_path(mount).mkdir(parents=True, exist_ok=True)

    def _check_disk(self) -> str | None:
        want = self.spec.get("disk_gb")
        if not want:
            return None
        free = shutil.disk_usage(self.jobdir).free
        if free < float(want) * 1024**3:
            return (f"The task asks for {want:g} GB of disk (resources.disk_gb) and this worker has "
                    f"{free / 1024**3:.1f} GB free")
        return None

    def _inside(self, path: Path) -> Path:
        """path, refused when (through links) it leaves the task's directories."""
        real = storage.within(self.fs, path)
        if real is None:
            raise OSError(errno.EXDEV, f"{path.relative_to(self.fs)} leads outside the task's directories")
        return real

    def _inside_new(self, path: str) -> Path:
        """Host path of a task file about to be written, refused when its directory leaves the task."""
        dest = self.host_path(path)
        existing = dest.parent
        while not existing.exists() and existing != self.fs:
            existing = existing.parent
        self._inside(existing)                   # before making directories through a link
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._inside(dest.parent)
        if dest.is_symlink():
            raise OSError(errno.EXDEV, f"{path} is a symbolic link")
        return dest

    def _stage(self, transfers: Transfers, item: dict[str, Any]) -> None:
        dest = self._inside_new(item["path"])
        if item.get("url"):
            transfers.download(item["url"], dest, item["type"])
        else:
            dest.write_bytes(str(item.get("content") or "").encode("utf-8"))

    # ---- executors ---------------------------------------------------------------------------------------------------
    def _job_spec(self, backend, i: int, executor: dict[str, Any]) -> JobSpec:
        env = dict(executor.get("env") or {})
        common: dict[str, Any] = dict(job_id=self.job_id, owner=self.owner, app="tes", workdir=self.jobdir,
                                      cpus=float(self.spec.get("cpus") or 1), memory_mb=self.spec.get("memory_mb"),
                                      time_limit_s=int(self.time_limit))
        mounts = {m: str(self.host_path(m)) for m in self.mounts}
        if self.backend_name == "local":
            return self._host_job_spec(i, executor, env, common)
        if self.backend_name != "container":
            raise BackendError(f"TES executors run on the local (host runtime) or container backend, not on "
                               f"{self.backend_name!r}")
        _open_to_group(self.fs)           # the container's user (not root) writes through the group
        return JobSpec(argv=list(executor["command"]), image=executor["image"], env=env, **common,
                       options={**(self.spec.get("backend_options") or {}),
                                "tes": {"index": i, "mounts": mounts, "workdir": executor.get("workdir"),
                                        "stdin": str(self._inside(self.host_path(executor["stdin"])))
                                        if executor.get("stdin") else None}})

    def _host_job_spec(self, i: int, executor: dict[str, Any], env: dict[str, str],
                       common: dict[str, Any]) -> JobSpec:
        """A host-runtime executor: the local backend runs it in the job sandbox, the task directories bound at
        their paths (staged inputs read-only), through workers/tes_launcher.py (stdin/stdout/stderr opened inside
        the sandbox, as the sandbox user, then the command exec()ed unchanged)."""
        status = self.meta / f"executor-{i}.status"
        status.write_bytes(b"")
        binds = [[str(self.host_path(m)), m, True] for m in self.mounts]
        for item in self.doc.get("inputs") or []:
            binds.append([str(self._inside(self.host_path(item["path"]))), norm(item["path"]), False])
        # The launcher and its interpreter at a place of their own: a task directory may cover their host paths
        # (a Nextflow task mounts /work, an ancestor of a venv in /work/...).
        base = os.path.realpath(sys.base_prefix)
        python = os.path.realpath(sys.executable)
        if not python.startswith(base + "/"):
            raise BackendError(f"the worker's interpreter {python} is not under its prefix {base}")
        binds += [[base, SANDBOX_PYTHON, False], [str(LAUNCHER), SANDBOX_LAUNCHER, False],
                  [str(status), STATUS_PATH, True]]
        launch = {"argv": executor["command"], "workdir": executor.get("workdir"), "stdin": executor.get("stdin"),
                  "stdout": executor.get("stdout"), "stderr": executor.get("stderr"), "status": STATUS_PATH}
        env = {"PATH": HOST_PATH, "HOME": executor.get("workdir") or "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp",
               **env}
        if any(base == m or base.startswith(m.rstrip("/") + "/") for m in self.mounts):
            # The interpreter finds its libpython by an absolute RUNPATH under a covered path: point the loader at
            # the copy under SANDBOX_PYTHON for the launcher alone, and give the command its own value back.
            launch["restore_env"] = {"LD_LIBRARY_PATH": env.get("LD_LIBRARY_PATH")}
            env["LD_LIBRARY_PATH"] = f"{SANDBOX_PYTHON}/lib"
        argv = [SANDBOX_PYTHON + python[len(base):], "-I", SANDBOX_LAUNCHER, "exec", json.dumps(launch)]
        return JobSpec(argv=argv, image=executor["image"], env=env, **common,
                       options={"image_recorded": executor["image"],
                                "host_task": {"binds": binds, "cwd": "/",
                                              "network": bool(self.settings.get("TES_HOST_NETWORK"))}})

    def _run_executor(self, backend, i: int, executor: dict[str, Any], deadline: float) -> tuple[str, str, int | None]:
        """Runs executor i to its end; returns (outcome, message, exit code), outcome one of
        exited / canceled / timeout / system."""
        entry: dict[str, Any] = {"start_time": rfc3339(utcnow()), "exit_code": None}
        self.logs["executors"].append(entry)
        offsets = {name: _size(self.jobdir / name) for name in ("stdout.log", "stderr.log")}
        try:
            spec = self._job_spec(backend, i, executor)
            handle = backend.submit(spec)
        except Exception as exc:
            self.logs["executors"].remove(entry)
            return "system", f"Executor {i} ({executor['image']}) could not start: {exc}", None
        with session_scope(self.url) as s:
            pid = int(handle) if handle.isdigit() and self.backend_name == "local" else None
            s.execute(update(Job).where(Job.id == self.job_id).values(handle=handle, pid=pid, heartbeat_at=utcnow()))
        self._save()
        outcome = "exited"
        while True:
            status = poll_in_slot(backend, handle)
            if status.state not in (QUEUED, B_RUNNING):
                break
            if self.canceled.is_set() or time.monotonic() > deadline:
                outcome = "canceled" if self.canceled.is_set() else "timeout"
                backend.cancel(handle)
                status = backend.poll(handle)
                break
            time.sleep(self.poll_interval)
        problems = []
        try:
            backend.fetch_outputs(handle, self.jobdir)
        except Exception as exc:
            problems.append(f"collecting its output failed: {exc}")
        try:
            backend.cleanup(handle)
        except Exception as exc:
            problems.append(f"cleanup failed: {exc}")
        if self.backend_name != "local":      # a container's streams land in the job's logs: copy them where asked
            for key, logname in (("stdout", "stdout.log"), ("stderr", "stderr.log")):
                if executor.get(key):
                    try:
                        _copy_from(self.jobdir / logname, offsets[logname], self._inside_new(executor[key]))
                    except OSError as exc:
                        problems.append(f"writing its {key} to {executor[key]} failed: {exc}")
        rc = status.exit_code
        if rc is not None and rc < 0:
            rc = 128 - rc                    # killed by a signal: the shell's convention, as containers report it
        entry.update(end_time=rfc3339(utcnow()), exit_code=rc if rc is not None else -1,
                     stdout=self._tail(executor.get("stdout"), "stdout.log", offsets),
                     stderr=self._tail(executor.get("stderr"), "stderr.log", offsets))
        self._save()
        setup = self.meta / f"executor-{i}.status"
        if rc == SETUP_FAILED and setup.exists() and setup.stat().st_size:
            return "system", f"Executor {i} could not be set up: {setup.read_text(errors='replace').strip()}", rc
        if outcome == "timeout":
            return outcome, (f"Executor {i} exceeded the task's time limit of {self.time_limit:g} s "
                             "and was stopped"), rc
        if outcome == "canceled":
            return outcome, "Task canceled by user", rc
        if rc is None:
            return "system", f"Executor {i} ended without an exit status: {status.reason or status.state}", None
        if problems:
            return "system", f"Executor {i}: {'; '.join(problems)}", rc
        if rc != 0:
            last = (entry["stderr"] or "").strip().splitlines()
            return "exited", f"Executor {i} exited with status {rc}" + (f": {last[-1][:300]}" if last else ""), rc
        return "exited", f"Executor {i} succeeded", rc

    def _tail(self, redirected: str | None, logname: str, offsets: dict[str, int]) -> str:
        limit = int(self.settings.get("TES_LOG_TAIL_BYTES") or 64 * 1024)
        if redirected:
            path, start = self.host_path(redirected), 0
            try:
                self._inside(path)
            except OSError:
                return ""
        else:
            path, start = self.jobdir / logname, offsets[logname]
        try:
            with open(path, "rb") as fh:
                fh.seek(0, 2)
                end = fh.tell()
                fh.seek(max(start, end - limit))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # ---- outputs -----------------------------------------------------------------------------------------------------
    def _upload_outputs(self, transfers: Transfers, strict: bool) -> list[str]:
        """Upload every output; returns the problems. After a failed executor (strict False) a missing output
        is noted in system_logs but is not a problem of its own."""
        problems: list[str] = []
        for i, item in enumerate(self.doc.get("outputs") or []):
            if self.canceled.is_set():
                break
            try:
                for src, container_path, url, kind in self._output_sources(item):
                    for done_url, rel, size in transfers.upload(src, url, kind):
                        shown = f"{container_path.rstrip('/')}/{rel}" if rel else container_path
                        self.logs["outputs"].append({"url": done_url, "path": shown, "size_bytes": size})
            except TransferStopped:
                break
            except (TransferError, OSError) as exc:
                missing = not self.host_path(item["path"]).exists() and not WILDCARD_RE.search(item["path"])
                message = f"Output outputs[{i}] ({item['path']}) failed: {exc}"
                if strict or not missing:
                    problems.append(message)
                self.logs["system_logs"].append(message)
        self._save()
        return problems

    def _output_sources(self, item: dict[str, Any]):
        """(host path, container path, url, kind) for an output; wildcards expand under path_prefix."""
        path = norm(item["path"])
        if not WILDCARD_RE.search(item["path"]):
            src = self.host_path(path)
            self._inside(src.parent)
            if src.exists():
                self._inside(src)
            return [(src, path, item["url"], item["type"])]
        prefix = norm(item["path_prefix"])
        pattern = glob.escape(str(self.fs)) + path
        found = []
        for match in sorted(glob.glob(pattern)):
            real = self._inside(Path(match))
            rel = Path(match).relative_to(self.host_path(prefix)).as_posix()
            url = item["url"].rstrip("/") + "/" + rel
            found.append((Path(match), f"{prefix.rstrip('/')}/{rel}", url, DIRECTORY if real.is_dir() else "FILE"))
        return found

    # ---- bookkeeping -------------------------------------------------------------------------------------------------
    def _save(self, **extra_fields: Any) -> None:
        logs = {"system_logs": list(self.logs["system_logs"]), "outputs": list(self.logs["outputs"]),
                "executors": [dict(e) for e in self.logs["executors"]]}
        with session_scope(self.url) as s:
            job = s.get(Job, self.job_id)
            if job is not None:
                job.extra = {**(job.extra or {}), "tes_logs": logs, **extra_fields}

    def _end(self, state: str, message: str, kind: str | None = None, exit_status: int | None = None,
             log_it: bool = True) -> str:
        if state != SUCCESS and message and log_it:
            self.logs["system_logs"].append(message)
        self._save(tes_error=kind)
        self.runner._end(self.job_id, state, message, exit_status=exit_status)
        with session_scope(self.url) as s:
            final = s.scalar(select(Job.state).where(Job.id == self.job_id))
        log.info("TES task %s ended %s: %s", self.job_id, final, message)
        return final or state


def _open_to_group(root: Path) -> None:
    """Group read/write on the task's files (and search on its directories) for a container's user."""
    for dirpath, _dirs, names in os.walk(root):
        for path in [dirpath] + [os.path.join(dirpath, n) for n in names]:
            st = os.lstat(path)
            if not os.path.islink(path):
                wanted = st.st_mode | (0o070 if os.path.isdir(path) else 0o060)
                if wanted != st.st_mode:
                    os.chmod(path, wanted)


def _copy_from(src: Path, offset: int, dest: Path) -> None:
    with open(src, "rb") as fh, open(dest, "wb") as out:
        fh.seek(offset)
        shutil.copyfileobj(fh, out)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
