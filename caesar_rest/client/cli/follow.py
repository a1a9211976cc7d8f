"""Following a job to its end: a live line (state, elapsed time, the last log line) at a terminal, one line per
state change otherwise; and the job's output fetched and extracted."""
from __future__ import annotations

import tarfile
import tempfile
import time
from pathlib import Path

from rich.live import Live
from rich.text import Text

from ..models import TERMINAL_STATES, JobStatus
from .ui import State, bars, err, note

INTERVAL = 0.5


def _last_line(state: State, job_id: str) -> str:
    logs = state.client.logs(job_id, tail=1)
    return (logs.get("stdout") or logs.get("stderr") or "").strip()[-200:]


def _line(job_id: str, status: JobStatus, started: float, last: str) -> Text:
    elapsed = status.get("elapsed_time")
    shown = f"{float(elapsed):.1f} s" if elapsed else f"{time.monotonic() - started:.1f} s (waiting)"
    text = Text(f"job {job_id}  ")
    text.append(str(status.get("state")), style="bold")
    text.append(f"  {shown}")
    if last:
        text.append(f"  | {last}", style="dim")
    return text


def follow(state: State, job_id: str) -> JobStatus:
    """Poll the job until it ends; returns its last status."""
    started = time.monotonic()
    if not state.interactive:
        seen: str | None = None

        def changed(status: JobStatus) -> None:
            nonlocal seen
            if status.get("state") != seen and not state.json:
                seen = status.get("state")
                note(f"job {job_id} {seen}")

        return state.client.wait(job_id, interval=INTERVAL, on_status=changed)
    with Live(console=err, refresh_per_second=8, transient=False) as live:
        while True:
            status = state.client.status(job_id)
            last = _last_line(state, job_id) if status.get("state") != "PENDING" else ""
            live.update(_line(job_id, status, started, last))
            if status.get("state") in TERMINAL_STATES:
                return status
            time.sleep(INTERVAL)


def fetch_output(state: State, job_id: str, dest: Path | None, extract: Path | None) -> Path:
    """The job's tar.gz into dest (a file or directory), or extracted into the directory `extract` (the archive
    itself removed after). Returns the file or the directory written."""
    if extract is None:
        with bars(state) as shown:
            return state.client.output(job_id, dest, progress=shown.callback(f"job_{job_id[:8]}.tar.gz"))
    extract.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=extract, prefix=".caesar-") as scratch:
        with bars(state) as shown:
            archive = state.client.output(job_id, Path(scratch), progress=shown.callback(f"job_{job_id[:8]}.tar.gz"))
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(extract, filter="data")     # no absolute paths, no .., no devices
    return extract
