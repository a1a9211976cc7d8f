"""A remote (non-blocking) stand-in backend for the phase drills: a real worker process loads it by import string
(BACKENDS' "class"), and it stops, on purpose, in the phase a drill names, so that the test can SIGKILL the worker
exactly there. It stands in for a remote peer only because no real one can be paused at a chosen line; every
other part (API, Celery over RabbitMQ, the runner, the reaper, the database) is real.

Its state lives in files under the BACKENDS option `state_dir`, shared by the worker that dies and the one that
follows: <state_dir>/<handle>/ holds the spec, a count of each call, and `in-<phase>` once a call stopped there.
`stop_in` (submit, fetch, cleanup) names the phase whose FIRST call stops (sleeps an hour); later calls go on."""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from caesar_rest.backends import EXITED, BackendBase, BackendError, BackendStatus, JobSpec


class PhaseBackend(BackendBase):
    name: ClassVar[str] = "phase"
    blocking: ClassVar[bool] = False

    def __init__(self, settings: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.dir = Path(options["state_dir"])
        self.stop_in = options.get("stop_in")

    def _count(self, where: Path, call: str) -> int:
        where.mkdir(parents=True, exist_ok=True)
        counter = where / f"calls-{call}"
        n = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(n))
        return n

    def _maybe_stop(self, where: Path, call: str, n: int) -> None:
        if self.stop_in == call and n == 1:
            (where / f"in-{call}").write_text("")
            time.sleep(3600)                 # the drill kills the worker here

    def submit(self, job: JobSpec) -> str:
        handle = f"phase-{uuid.uuid4().hex[:12]}"
        where = self.dir / job.job_id              # counted per job: a second submit would be a doubled job
        n = self._count(where, "submit")
        self._maybe_stop(where, "submit", n)
        (self.dir / handle).mkdir(parents=True)
        (self.dir / handle / "job_id").write_text(job.job_id)
        return handle

    def poll(self, handle: str) -> BackendStatus:
        self._job(handle)
        return BackendStatus(EXITED, exit_code=0, host="phase.example")

    def cancel(self, handle: str) -> None:
        self._job(handle)

    def fetch_outputs(self, handle: str, dest: Path) -> None:
        where = self._job(handle)
        n = self._count(where, "fetch")
        self._maybe_stop(where, "fetch", n)
        (dest / "stdout.log").write_text("phase: done\n")
        (dest / "stderr.log").write_text("")
        (dest / "result.txt").write_text(json.dumps({"fetched_on_call": n}) + "\n")

    def cleanup(self, handle: str) -> None:
        where = self._job(handle)
        n = self._count(where, "cleanup")
        self._maybe_stop(where, "cleanup", n)
        (where / "cleaned").write_text("")

    def _job(self, handle: str) -> Path:
        where = self.dir / handle
        if not where.is_dir():
            raise BackendError(f"phase stand-in knows no job {handle!r}")
        return where
