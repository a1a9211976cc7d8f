"""The worker side of TES tasks (kind "tes", workers/kinds.py): stage inputs, one step per executor run in
sequence on the job's backend by the runner, upload outputs, and record the TES logs (job.extra["tes_logs"]) and
the failure kind (job.extra["tes_error"]).

Every task directory (volumes, the directories of inputs, outputs, workdirs and std streams: see
caesar_rest.tes_task.mount_points) is a directory under <job dir>/fs/ mounted at its path for each executor.
On the container backend an executor is a container (image, argv = command). On the host runtime
(TES_HOST_RUNTIME, off unless enabled) the local backend runs it in the job sandbox (workers/sandbox.py), which
binds those directories at their paths, through workers/tes_launcher.py.
"""
from __future__ import annotations

import errno
import glob
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from caesar_rest import storage
from caesar_rest.backends import JobSpec, backend_class
from caesar_rest.db import json_merge, session_scope
from caesar_rest.models import JOBS, Job, utcnow
from caesar_rest.states import ABORTED, CANCELED, FAILURE, SUCCESS, TIMED_OUT, Claim, JobState
from caesar_rest.tes import EXECUTOR, SYSTEM, rfc3339
from caesar_rest.tes_task import DIRECTORY, WILDCARD_RE, mount_points, norm

from .kinds import Ending, StepResult
from .tes_batch import batch_ended
from .tes_executors import batch_spec, executor_spec
from .tes_launcher import SETUP_FAILED
from .transfer import TransferError, Transfers, TransferStopped

log = logging.getLogger("caesar.tes")

if TYPE_CHECKING:
    from .runner import Runner


class TaskRun:
    """One TES task on one worker, as the runner drives it (workers/kinds.py): the task's inputs, one step per
    executor, its outputs, and its TES logs."""

    running_message = "Task is running"

    def __init__(self, runner: Runner, claim: Claim) -> None:
        job = claim.job
        self.runner = runner
        self.settings = runner.settings
        self.url = runner.url
        self.job_id = job.id
        self.owner = job.owner
        self.backend_name = job.backend
        self.doc: dict[str, Any] = dict((job.extra or {}).get("tes") or {})
        self.spec: dict[str, Any] = dict(job.spec or {})
        self.started_at = job.start_date
        self.jobdir = Path(job.workdir)
        self.fs = self.jobdir / "fs"
        self.meta = self.jobdir / ".tes"
        self.mounts = mount_points(self.doc)
        old = (job.extra or {}).get("tes_logs") or {}
        self.logs: dict[str, Any] = {"system_logs": list(old.get("system_logs") or []), "executors": [], "outputs": []}
        # A remote backend that runs the whole task as one job (slurm): its script records each executor's end.
        self.batch = len(self.doc.get("executors") or []) > 1 and self.backend_name != "local" and \
            backend_class(self.backend_name, (self.settings.get("BACKENDS") or {}).get(self.backend_name)).tes_batch
        self.time_limit = float(self.spec.get("time_limit") or self.settings["DEFAULT_TIME_LIMIT"])
        self.canceled = threading.Event()
        self.finished = threading.Event()
        self.poll_interval = float(self.settings["JOB_POLL_INTERVAL"])
        self.transfers = Transfers(self.settings, self.owner, should_stop=self.canceled.is_set)
        self.failure: tuple[str, str, int | None] | None = None      # (kind, message, exit code)
        self._deadline: float | None = None
        self._current: tuple[int, dict[str, Any], dict[str, Any], dict[str, int]] | None = None
        self._watcher = threading.Thread(target=self._watch, name=f"tes-watch-{self.job_id[:8]}", daemon=True)

    def __enter__(self) -> TaskRun:
        self._watcher.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finished.set()
        self._watcher.join(timeout=5)

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

    # ---- what the runner asks --------------------------------------------------------------------------------------
    def stage(self) -> Ending | None:
        try:
            self._layout()
        except OSError as exc:
            return self._ending(ABORTED, f"Preparing the task directories failed: {exc}", SYSTEM)
        problem = self._check_disk()
        if problem:
            return self._ending(ABORTED, problem, SYSTEM)
        for i, item in enumerate(self.doc.get("inputs") or []):
            if self.canceled.is_set():
                break
            try:
                self._stage(self.transfers, item)
            except TransferStopped:
                break
            except (TransferError, OSError) as exc:
                return self._ending(ABORTED, f"Input inputs[{i}] ({item['path']}) could not be staged: {exc}", SYSTEM)
        if self.canceled.is_set():
            return self._ending(CANCELED, "Task canceled by user before its executors ran")
        return None

    def steps(self) -> Iterator[JobSpec]:
        for i, executor in enumerate(self.doc["executors"]):
            if self.canceled.is_set() or self.failure is not None:
                return
            entry: dict[str, Any] = {"start_time": rfc3339(utcnow()), "exit_code": None}
            self.logs["executors"].append(entry)
            offsets = {name: _size(self.jobdir / name) for name in ("stdout.log", "stderr.log")}
            self._current = (i, executor, entry, offsets)
            if self.batch:
                yield batch_spec(self)
                return
            yield self._job_spec(i, executor)

    def submit_failed(self, spec: JobSpec | None, exc: Exception) -> Ending:
        assert self._current is not None
        i, executor, entry, _offsets = self._current
        self.logs["executors"].remove(entry)
        self.failure = ("system", f"Executor {i} ({executor['image']}) could not start: {exc}", None)
        return self.finish()

    def stop_requested(self) -> bool:
        return self.canceled.is_set()

    def deadline(self, started: float) -> float:
        """One limit for all the executors, counted from the first one's start."""
        if self._deadline is None:
            self._deadline = started + self.time_limit
        return self._deadline

    def _resume(self) -> None:
        """On a remote backend the executor is followed by poll tasks, each with a TaskRun of its own: the executor
        that ended is the task's only one (caesar_rest.tes refuses more there), its logs read from their start."""
        if self._current is None:
            entry: dict[str, Any] = {"start_time": rfc3339(self.started_at or utcnow()), "exit_code": None}
            self.logs["executors"].append(entry)
            self._current = (0, self.doc["executors"][0], entry, {"stdout.log": 0, "stderr.log": 0})

    def step_ended(self, spec: JobSpec | None, result: StepResult) -> Ending | None:
        if self.batch:
            return batch_ended(self, result)
        self._resume()
        return self._judge(result)

    def _judge(self, result: StepResult) -> Ending | None:
        """What the current executor's end means for the task: an Ending (canceled), a failure, or on."""
        assert self._current is not None
        _i, executor, _entry, _offsets = self._current
        outcome, detail, rc = self._executor_ended(result)
        if outcome == "canceled" or self.canceled.is_set():
            return self._ending(CANCELED, "Task canceled by user")
        if outcome in ("timeout", "system"):
            self.failure = (outcome, detail, rc)
        elif rc != 0 and not executor.get("ignore_error"):
            self.failure = ("executor", detail, rc)
        elif rc != 0:
            self.logs["system_logs"].append(f"{detail} (ignore_error: continuing)")
        return None

    def finish(self) -> Ending:
        if self.canceled.is_set():
            return self._ending(CANCELED, "Task canceled by user")
        upload_problems = self._upload_outputs(self.transfers, strict=self.failure is None)
        if self.canceled.is_set():
            return self._ending(CANCELED, "Task canceled by user while its outputs were uploaded")
        if self.failure is not None:
            kind, message, rc = self.failure
            if kind == "timeout":
                return self._ending(TIMED_OUT, message, EXECUTOR, exit_status=rc)
            if kind == "executor":
                return self._ending(FAILURE, message, EXECUTOR, exit_status=rc)
            return self._ending(FAILURE, message, SYSTEM, exit_status=rc)
        if upload_problems:           # already in system_logs, one line each
            return self._ending(FAILURE, "; ".join(upload_problems), SYSTEM, log_it=False)
        return self._ending(SUCCESS, "Task complete", exit_status=0)

    def internal_error(self, exc: Exception) -> Ending:
        return self._ending(FAILURE, f"Internal error running the task: {exc.__class__.__name__}: {exc}", SYSTEM)

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

    def inside(self, path: Path) -> Path:
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
        self.inside(existing)                   # before making directories through a link
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.inside(dest.parent)
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
    def _job_spec(self, i: int, executor: dict[str, Any]) -> JobSpec:
        return executor_spec(self, i, executor)

    def _executor_ended(self, result: StepResult) -> tuple[str, str, int | None]:
        """What executor i's end means: (outcome, message, exit code), outcome one of exited / canceled / timeout /
        system. Its logs are recorded and its streams copied where the task asked."""
        assert self._current is not None
        i, executor, entry, offsets = self._current
        status = result.after_stop or result.status
        problems = [f"{what} failed: {exc}" for what, exc in
                    (("collecting its output", result.fetch_error), ("cleanup", result.cleanup_error)) if exc]
        if self.backend_name != "local" and not self.batch:   # a container's streams land in the job's logs
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
        if result.outcome == "timeout":
            return "timeout", (f"Executor {i} exceeded the task's time limit of {self.time_limit:g} s "
                               "and was stopped"), rc
        if result.outcome == "canceled":
            return "canceled", "Task canceled by user", rc
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
                self.inside(path)
            except OSError:
                return ""
        elif self.batch:                # the script's own file of the stream (workers/backends/slurm_tes.py)
            assert self._current is not None
            path, start = self.meta / f"executor-{self._current[0]}.{logname.split('.')[0]}", 0
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
            self.inside(src.parent)
            if src.exists():
                self.inside(src)
            return [(src, path, item["url"], item["type"])]
        prefix = norm(item["path_prefix"])
        pattern = glob.escape(str(self.fs)) + path
        found = []
        for match in sorted(glob.glob(pattern)):
            real = self.inside(Path(match))
            rel = Path(match).relative_to(self.host_path(prefix)).as_posix()
            url = item["url"].rstrip("/") + "/" + rel
            found.append((Path(match), f"{prefix.rstrip('/')}/{rel}", url, DIRECTORY if real.is_dir() else "FILE"))
        return found

    # ---- bookkeeping -------------------------------------------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        return {"system_logs": list(self.logs["system_logs"]), "outputs": list(self.logs["outputs"]),
                "executors": [dict(e) for e in self.logs["executors"]]}

    def _save(self) -> None:
        """The TES logs so far, for clients reading the task while it runs."""
        with session_scope(self.url) as s:
            s.execute(update(Job).where(Job.id == self.job_id)
                      .values(extra=json_merge(JOBS.c.extra, {"tes_logs": self._snapshot()})))

    def _ending(self, state: JobState, message: str, kind: str | None = None, exit_status: int | None = None,
                log_it: bool = True) -> Ending:
        """The task's end, with its TES logs and failure kind (executor / system) recorded with it."""
        if state != SUCCESS and message and log_it:
            self.logs["system_logs"].append(message)
        log.info("TES task %s ends %s: %s", self.job_id, state, message)
        return Ending(state, message, exit_status=exit_status, extra={"tes_logs": self._snapshot(), "tes_error": kind})


def _copy_from(src: Path, offset: int, dest: Path) -> None:
    with open(src, "rb") as fh, open(dest, "wb") as out:
        fh.seek(offset)
        shutil.copyfileobj(fh, out)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
