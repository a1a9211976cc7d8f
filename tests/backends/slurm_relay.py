"""An HTTP relay in front of the real slurmrestd that a test can make misbehave at one exact moment: lose the reply
to a submission slurmrestd accepted (the connection closed instead, or held until the test kills the worker), or
hold the answer that first tells a worker a job has ended (so the test acts on the cluster's files before the
worker copies them back). Every request goes to slurmrestd unchanged; only the replies' delivery is played with.
It stands between two real peers because neither can be stopped at that line."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import urllib3

SUBMIT = re.compile(r"^/slurm/[^/]+/job/submit$")
JOB = re.compile(r"^/slurm/[^/]+/job/(\d+)$")
JOBS = re.compile(r"^/slurm/[^/]+/jobs$")
NOT_ENDED = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "STAGE_OUT", "SIGNALING"}


class SlurmRelay:
    """Relays to `target` (slurmrestd's base URL). `submit_reply`: "pass", "drop" (the first accepted submission's
    reply is lost: the connection closes) or "hold" (that reply is held, `submit_held` set, until `release`).
    `hold_ended`: the first answer to GET /job/{id} that says the job ended is held (`ended_held` set) until
    `release`. `fail_listing`: that many GET /jobs are answered 503 (slurmrestd unreachable) instead of relayed."""

    def __init__(self, target: str, submit_reply: str = "pass", hold_ended: bool = False) -> None:
        self.target = target.rstrip("/")
        self.submit_reply = submit_reply
        self.hold_ended = hold_ended
        self.fail_listing = 0
        self.submits: list[dict[str, Any]] = []        # slurmrestd's answers to every submission relayed
        self.submit_held = threading.Event()
        self.ended_held = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._played: set[str] = set()
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=90))
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:     # quiet
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "GET" and JOBS.match(self.path) and relay._fail_listing():
                    self.send_error(503, "the relay plays slurmrestd unreachable")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                answer = relay.http.request(self.command, relay.target + self.path, body=body, headers=headers)
                if not relay._deliver(self.command, self.path, answer):
                    self.close_connection = True
                    return                  # nothing written: the client sees the connection closed
                self.send_response(answer.status)
                for key, value in answer.headers.items():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(answer.data)

            def do_GET(self) -> None:
                self._relay()

            def do_POST(self) -> None:
                self._relay()

            def do_DELETE(self) -> None:
                self._relay()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="slurm-relay", daemon=True).start()

    def arm(self, submit_reply: str = "pass", hold_ended: bool = False, fail_listing: int = 0) -> SlurmRelay:
        """What the relay does from now on, each misbehaviour once; what it did before is forgotten."""
        with self._lock:
            self.submit_reply, self.hold_ended, self.fail_listing = submit_reply, hold_ended, fail_listing
            self._played.clear()
            self.submits.clear()
            for event in (self.submit_held, self.ended_held, self.release):
                event.clear()
        return self

    def _fail_listing(self) -> bool:
        with self._lock:
            if self.fail_listing <= 0:
                return False
            self.fail_listing -= 1
            return True

    def _once(self, what: str) -> bool:
        with self._lock:
            if what in self._played:
                return False
            self._played.add(what)
            return True

    def _deliver(self, method: str, path: str, answer: Any) -> bool:
        """False: the reply is lost. May block (a held reply) until release."""
        try:
            parsed = json.loads(answer.data or b"{}")
        except ValueError:
            parsed = {}
        if method == "POST" and SUBMIT.match(path):
            self.submits.append(parsed)
            if self.submit_reply != "pass" and parsed.get("job_id") and self._once("submit"):
                if self.submit_reply == "hold":
                    self.submit_held.set()
                    self.release.wait(600)
                return False
        if method == "GET" and JOB.match(path) and self.hold_ended:
            jobs = parsed.get("jobs") or []
            if jobs and jobs[0].get("job_state") not in NOT_ENDED and self._once("ended"):
                self.ended_held.set()
                self.release.wait(600)
        return True

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
