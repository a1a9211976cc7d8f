"""Resident memory of processes, from /proc: one reading, or the peak sampled while something runs.
Used by the benchmarks and by the deployment tests (1 GiB through nginx and uWSGI)."""
from __future__ import annotations

import threading
from pathlib import Path

MiB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """Resident set size of a process; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """Peak RSS of some processes, sampled every 20 ms on a thread while the `with` block runs."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.before = {pid: rss_bytes(pid) for pid in pids}
        self.peak = dict(self.before)
        self.after: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], rss_bytes(pid))
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
        self.after = {pid: rss_bytes(pid) for pid in self.pids}

    def growth(self) -> tuple[int, int]:
        """(largest peak growth, largest growth left afterwards) over the processes, in bytes."""
        return (max((self.peak[p] - self.before[p] for p in self.pids), default=0),
                max((self.after.get(p, 0) - self.before[p] for p in self.pids), default=0))

    def describe(self) -> str:
        return ", ".join(f"pid {p}: before {self.before[p] / MiB:.1f} peak {self.peak[p] / MiB:.1f} "
                         f"after {self.after.get(p, 0) / MiB:.1f} MiB" for p in self.pids)
