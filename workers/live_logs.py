"""A running job's stdout and stderr, relayed to S3 for an API on another host (caesar_rest/joblogs.py reads them).
With STORAGE s3 the worker that holds a job copies the tail of each log (its last joblogs.MAX_BYTES, what an
answer carries) to <S3_PREFIX>live/<owner>/<job_id>/ every LIVE_LOG_INTERVAL seconds, only when the file changed.
S3 has no append: a tail re-sent whole is the simplest copy a reader can take at any time, bounded in size.
The relay stops before the job's end archives the directory; its copy goes once the end names that archive."""
from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caesar_rest import joblogs, s3store

log = logging.getLogger("caesar.runner")


class LogRelay:
    def __init__(self, settings: Mapping[str, Any], job_id: str, owner: str, workdir: Path) -> None:
        self.job_id = job_id
        self.workdir = workdir
        self.every = float(settings["LIVE_LOG_INTERVAL"])
        self.store = s3store.store_for(settings)
        self.bucket, self.prefix = s3store.split_url(joblogs.live_url(self.store, owner, job_id))
        self._seen: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False
        self.sent = 0              # copies sent so far (none: nothing to remove)

    def start(self) -> LogRelay:
        self._thread = threading.Thread(target=self._loop, name=f"log relay {self.job_id}", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.push()

    def push(self) -> int:
        """Send each log whose size or mtime moved since the last copy; returns how many were sent."""
        sent = 0
        for name in joblogs.NAMES:
            path = self.workdir / f"{name}.log"
            try:
                st = path.stat()
            except OSError:
                continue
            mark = (st.st_size, st.st_mtime_ns)
            if self._seen.get(name) == mark:
                continue
            data = joblogs.tail_bytes(path)
            if data is None:
                continue
            try:
                self.store.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}{name}.log", Body=data)
            except Exception as exc:         # a relay that fails costs the live view only, never the job
                if not self._warned:
                    log.warning("job %s: live log not relayed to S3: %s", self.job_id, s3store.describe_error(exc))
                    self._warned = True
                continue
            self._seen[name] = mark
            sent += 1
        self.sent += sent
        return sent

    def stop(self, last_copy: bool = True) -> None:
        """Stop relaying (idempotent), after one last copy of what changed unless told not to: the end that archives
        the directory asks for none (a short job then costs no S3 call for its live logs at all)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.every + 30)
        if last_copy:
            self.push()

    def remove(self) -> None:
        """The relayed copy goes (the job's end names its archived directory: logs are read from there)."""
        if not self.sent:
            return
        keys = [{"Key": f"{self.prefix}{name}.log"} for name in joblogs.NAMES]
        try:
            self.store.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
        except Exception as exc:
            log.warning("job %s: relayed live logs not removed from S3: %s", self.job_id,
                        s3store.describe_error(exc))
