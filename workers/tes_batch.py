"""The end of a TES task that ran as one job of a remote backend (Backend.tes_batch: slurm's script,
workers/backends/slurm_tes.py): an ExecutorLog for each executor that started, from the records the script left in
the task's meta directory (executor-i.start / .end / .exit), each judged in order as a local task's steps are."""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caesar_rest.backends import EXITED, BackendStatus
from caesar_rest.states import CANCELED
from caesar_rest.tes import rfc3339

from .kinds import Ending, StepResult

if TYPE_CHECKING:
    from .tes import TaskRun


def batch_ended(self: TaskRun, result: StepResult) -> Ending | None:
    """The task's one job ended: an ExecutorLog for each executor that started, from the records its script
    left in the meta directory (workers/backends/slurm_tes.py), judged in order as the steps of a local task."""
    self.logs["executors"] = []
    for i, executor in enumerate(self.doc["executors"]):
        start = _stamp(self.meta / f"executor-{i}.start")
        if start is None:
            break
        entry: dict[str, Any] = {"start_time": start, "exit_code": None}
        self.logs["executors"].append(entry)
        self._current = (i, executor, entry, {"stdout.log": 0, "stderr.log": 0})
        code = _number(self.meta / f"executor-{i}.exit")
        # The one running when the job ended (a cancel, the time limit, a node lost) ends as the job did.
        ending = self._judge(result if code is None else StepResult(BackendStatus(EXITED, exit_code=int(code))))
        entry["end_time"] = _stamp(self.meta / f"executor-{i}.end") or entry["end_time"]
        self._save()
        if ending is not None or self.failure is not None:
            return ending
    ran = len(self.logs["executors"])
    if ran == len(self.doc["executors"]):
        return None
    if result.outcome == "canceled" or self.canceled.is_set():
        return self._ending(CANCELED, "Task canceled by user")
    status = result.after_stop or result.status
    if result.outcome == "timeout":
        why = f"The task exceeded its time limit of {self.time_limit:g} s before executor {ran} started"
        self.failure = ("timeout", why, None)
    else:
        why = (f"The task's job ended before executor {ran} started: {status.reason or status.state} "
               f"(exit status {status.exit_code})")
        self.failure = ("system", why, None)
    return None


def _number(path: Path) -> float | None:
    """A number a job script wrote (a status, a time: date +%s.%N), None when the file is missing or incomplete."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    try:
        return float(text)
    except ValueError:
        head = text.split(".")[0]          # a date without %N writes "1764745200.N"
        return float(head) if head.isdigit() else None


def _stamp(path: Path) -> str | None:
    when = _number(path)
    return None if when is None else rfc3339(datetime.fromtimestamp(when, UTC).replace(tzinfo=None))
