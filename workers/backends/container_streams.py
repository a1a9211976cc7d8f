"""What flows in and out of a running job container: its log streams followed into files, and its stdin fed."""
from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any

import docker

log = logging.getLogger("caesar.backends.container")


class LogPump:
    """Follows one stream of a container's log into a file while it runs, so the job's logs are live."""

    def __init__(self, base_url: str, api_version: str, handle: str, stream: str, path: Path) -> None:
        self.path = path
        self.start = path.stat().st_size if path.exists() else 0
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._abandoned = False
        # Its own client: no read timeout (an app may print nothing for hours), no sharing across threads.
        self._api = docker.APIClient(base_url=base_url, version=api_version,
                                     timeout=None)  # type: ignore[arg-type]  # None: no timeout (a followed stream)
        self.thread = threading.Thread(target=self._run, args=(handle, stream), daemon=True,
                                       name=f"logs-{handle[:12]}-{stream}")
        self.thread.start()

    def _run(self, handle: str, stream: str) -> None:
        try:
            with open(self.path, "ab") as fh:
                for chunk in self._api.logs(handle, stdout=stream == "stdout", stderr=stream == "stderr",
                                            stream=True, follow=True):
                    with self._lock:
                        if self._abandoned:
                            return
                        fh.write(chunk)
                        fh.flush()
        except Exception as exc:    # handed to fetch_outputs, which reads the whole stream again
            self.error = exc
        finally:
            self._api.close()

    def abandon(self) -> None:
        """Stop following: nothing more is written to the file once this returns (the caller reads the log
        whole instead); the connection is closed so the thread ends when the engine lets it."""
        with self._lock:
            self._abandoned = True
        try:
            self._api.close()
        except Exception:
            pass


def feed_stdin(sock: Any, path: Path, handle: str, job_id: str) -> None:
    """Stream a file into a started container's stdin on a thread, then close it (EOF for the program)."""
    raw = getattr(sock, "_sock", sock)

    def feed() -> None:             # the program reads while the runner watches for cancel and time limit
        try:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1024 * 1024), b""):
                    raw.sendall(chunk)
            raw.shutdown(socket.SHUT_WR)
        except OSError as exc:
            log.warning("job %s: stdin of container %s: %s", job_id, handle[:12], exc)
        finally:
            raw.close()

    threading.Thread(target=feed, name=f"stdin-{handle[:8]}", daemon=True).start()
