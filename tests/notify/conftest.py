"""Notification fixtures: real HTTP receivers (a threading http.server on 127.0.0.2, the one network the stack's
egress rules allow) that check each request's HMAC signature themselves, and the API, a local worker and the
control worker (the one that delivers) as real processes. The control worker runs in a mount namespace of its own
whose /etc/hosts says internal.test is 127.0.0.1 and receiver.test is 127.0.0.2 (tests/tes/hosts_namespace.py):
the answers a hostile DNS server could give for a name a user chose."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from caesar_rest.auth import hash_token

from ..support import (
    API,
    REPO,
    Proc,
    create_pg_database,
    drop_pg_database,
    embedded_settings,
    production_settings,
    settings_env,
    start_api,
    start_worker,
)

PEER = "127.0.0.2"
SECRET = "notify-test-secret"
TOKENS = {"alice": "n-alice-token", "bob": "n-bob-token", "root": "n-admin-token"}
USERS = {"alice": {"tokens_sha256": [hash_token(TOKENS["alice"])]},
         "bob": {"tokens_sha256": [hash_token(TOKENS["bob"])]},
         "root": {"tokens_sha256": [hash_token(TOKENS["root"])], "admin": True}}


class Receiver:
    """An HTTP receiver on PEER at a fixed port, which may be down (nothing listens) and brought up later. Each
    POST is recorded with its headers, its JSON body and whether its signature and timestamp checked out (the
    receiver computes the HMAC itself, as README's Notifications section tells a receiver to)."""

    def __init__(self, status: int = 204) -> None:
        with socket.socket() as probe:
            probe.bind((PEER, 0))
            self.port = probe.getsockname()[1]
        self.status = status
        self.requests: list[dict[str, Any]] = []
        self.server: ThreadingHTTPServer | None = None

    def url(self, path: str = "/hook", host: str = PEER) -> str:
        return f"http://{host}:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stamp, signature = self.headers.get("X-Caesar-Timestamp"), self.headers.get("X-Caesar-Signature")
                expected = "sha256=" + hmac.new(SECRET.encode(), f"{stamp}.".encode() + body,
                                                hashlib.sha256).hexdigest()
                fresh = stamp is not None and stamp.isdigit() and abs(time.time() - int(stamp)) < 300
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body),
                                          "signed": fresh and hmac.compare_digest(expected, signature or "")})
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer((PEER, self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def events(self, job_id: str) -> list[str]:
        return [r["body"]["event"] for r in self.requests if r["headers"].get("X-Caesar-Job") == job_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    """Receivers a test makes itself (Receiver(), started or not), stopped at the end."""
    made: list[Receiver] = []
    yield made
    for r in made:
        r.stop()


class Client:
    """The caesar-rest API as one user."""

    def __init__(self, base: str, user: str) -> None:
        self.base, self.session = base, requests.Session()
        self.session.headers["Authorization"] = f"Bearer {TOKENS[user]}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.base + path, timeout=30, **kwargs)

    def submit(self, notify: Any, **inputs: Any) -> requests.Response:
        return self.call("POST", f"{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 0, **inputs},
                                                     "notify": notify})

    def notifications(self, job_id: str) -> dict[str, Any]:
        r = self.call("GET", f"{API}/job/{job_id}/notifications")
        assert r.status_code == 200, r.text
        return r.json()

    def status(self, job_id: str) -> dict[str, Any]:
        return self.call("GET", f"{API}/job/{job_id}/status").json()


def start_control_with_hosts(settings: dict[str, Any], hosts: Path, log: Path) -> Proc:
    """The control worker (--beat: the reaper and the notifications' sweep) in a mount namespace where /etc/hosts
    is the file hosts (util-linux unshare, as root, as tests/tes/test_egress.py does for a TES worker)."""
    cmd = ["unshare", "--mount", "--propagation", "private", "--", sys.executable,
           str(REPO / "tests" / "tes" / "hosts_namespace.py"), str(hosts),
           sys.executable, "-m", "celery", "-A", "workers.celery", "worker", "--loglevel", "INFO", "-Q",
           settings.get("QUEUE_PREFIX", "") + "control", "--concurrency", "1", "--without-gossip",
           "--without-mingle", "--hostname", f"control-{uuid.uuid4().hex[:6]}@%h", "--beat", "--schedule",
           str(Path(settings["ROOT"]) / f"beat-schedule-{os.urandom(3).hex()}")]
    proc = Proc(cmd, settings_env(settings), log)
    deadline = time.time() + 60
    while "ready." not in proc.log():
        if proc.popen.poll() is not None or time.time() > deadline:
            proc.stop()
            raise RuntimeError(f"control worker with its own /etc/hosts did not start:\n{proc.log()}")
        time.sleep(0.2)
    return proc


class Stack:
    def __init__(self, root: Path, settings: dict[str, Any], hosts: Path) -> None:
        self.root, self.settings, self.hosts = root, settings, hosts
        self.worker = start_worker(settings, ["local"], root / "worker.log", concurrency=2)
        self.control = start_control_with_hosts(settings, hosts, root / "control.log")
        self.api, self.base = start_api(settings, root / "api.log")
        self.alice, self.bob, self.root_user = (Client(self.base, u) for u in ("alice", "bob", "root"))

    def restart_control(self, between: Any = None) -> None:
        self.control.stop()
        if between is not None:
            between()
        self.control = start_control_with_hosts(self.settings, self.hosts, self.root / "control.log")

    def lose_control_messages(self) -> int:
        """What a broker that lost its messages (a restart without persistence) leaves: the control queue emptied
        (the embedded broker's message files removed, RabbitMQ's queue purged). Returns how many were lost."""
        queue = self.settings.get("QUEUE_PREFIX", "") + "control"
        if self.settings.get("BROKER_URL", "filesystem://").startswith("filesystem://"):
            files = list((Path(self.settings["ROOT"]) / "broker" / "queue").glob(f"*.{queue}.msg"))
            for path in files:
                path.unlink()
            return len(files)
        from kombu import Connection

        with Connection(self.settings["BROKER_URL"]) as conn:
            return int(conn.default_channel.queue_purge(queue) or 0)

    def stop(self) -> None:
        for proc in (self.api, self.control, self.worker):
            proc.stop()


@pytest.fixture(scope="module", params=["embedded", "production"])
def stack(request, tmp_path_factory) -> Iterator[Stack]:
    """The embedded default (SQLite, filesystem broker) and production (PostgreSQL, RabbitMQ, Redis)."""
    root = tmp_path_factory.mktemp(f"notify-{request.param}")
    hosts = root / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 internal.test\n{PEER} receiver.test\n")
    extra = {"AUTH_MODE": "token", "AUTH_USERS": USERS, "EGRESS_ALLOWED_NETWORKS": [f"{PEER}/32"],
             "TES_HOST_RUNTIME": True, "NOTIFY_SECRET": SECRET, "NOTIFY_BACKOFF": 0.5, "NOTIFY_BACKOFF_MAX": 1.0,
             "NOTIFY_TIMEOUT": 2, "NOTIFY_ATTEMPTS": 40, "NOTIFY_SWEEP_INTERVAL": 1.0, "STALE_AFTER": 30}
    db_url = None
    if request.param == "embedded":
        settings = embedded_settings(root / "var", **extra)
    else:
        db_url = create_pg_database()
        settings = production_settings(root / "var", db_url, **extra)
    try:
        s = Stack(root, settings, hosts)
        yield s
        s.stop()
    finally:
        if db_url:
            drop_pg_database(db_url)
