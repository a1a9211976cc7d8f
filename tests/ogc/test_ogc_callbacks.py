"""The callback class: an execute request's subscriber URIs get the job's statusInfo when it runs (inProgressUri)
and fails (failedUri), and its results document when it succeeds (successUri), through the service's notification
outbox, delivered by the control worker to a real local HTTP receiver, signed (the receiver checks the HMAC itself),
retried when the receiver was down at first."""
from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ..support import wait_until
from .conftest import NOTIFY_SECRET

CONF = "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/callback"


class Receiver:
    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.got: list[dict[str, Any]] = []
        self.server: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stamp = self.headers.get("X-Caesar-Timestamp") or ""
                expected = "sha256=" + hmac.new(NOTIFY_SECRET.encode(), f"{stamp}.".encode() + body,
                                                hashlib.sha256).hexdigest()
                got.append({"path": self.path, "body": json.loads(body), "signed": hmac.compare_digest(
                    expected, self.headers.get("X-Caesar-Signature") or "") and abs(time.time() - int(stamp)) < 300})
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def _execute(alice, ogc, receiver, **inputs):
    subscriber = {k: receiver.url(f"/{k}") for k in ("successUri", "inProgressUri", "failedUri")}
    r = alice.post(f"{ogc}/processes/sleeper/execution", headers={"Prefer": "respond-async"}, timeout=30,
                   json={"inputs": inputs, "subscriber": subscriber})
    assert r.status_code == 201, r.text
    return r.json()["jobID"]


def test_callbacks_are_delivered_signed(ogc_stack, alice, receiver, schemas):
    receiver.start()
    ogc = ogc_stack["ogc"]
    assert CONF in alice.get(f"{ogc}/conformance", timeout=10).json()["conformsTo"]
    ok = _execute(alice, ogc, receiver, seconds=0, message="called back")
    bad = _execute(alice, ogc, receiver, **{"exit-code": 5})
    wait_until(lambda: len(receiver.got) >= 4, 60, "two inProgress, one success and one failed callback")
    by = {(r["path"], (r["body"].get("jobID") or "")): r for r in receiver.got}
    assert all(r["signed"] for r in receiver.got)
    results = next(r["body"] for r in receiver.got if r["path"] == "/successUri")
    schemas.validate(results, "results")
    assert "sleeper" in results, results
    assert results["sleeper"]["value"].strip() == "called back"
    for job_id in (ok, bad):
        running = by[("/inProgressUri", job_id)]["body"]
        schemas.validate(running, "statusInfo")
        assert running["status"] == "running"
    failed = by[("/failedUri", bad)]["body"]
    schemas.validate(failed, "statusInfo")
    assert failed["status"] == "failed" and failed["links"][0]["href"] == f"{ogc}/jobs/{bad}"
    assert ("/failedUri", ok) not in by


def test_a_receiver_down_at_first_gets_the_callback_later(ogc_stack, alice, receiver):
    ogc = ogc_stack["ogc"]
    job_id = _execute(alice, ogc, receiver, seconds=0)
    notes = f"{ogc_stack['base']}/caesar/api/v1.0/job/{job_id}/notifications"

    def failed_attempt():
        report = alice.get(notes, timeout=10).json()
        return any(a for s in report["subscriptions"] for d in s["deliveries"] for a in d["attempts"])

    wait_until(failed_attempt, 60, "a failed delivery attempt while the receiver is down")
    assert not receiver.got
    receiver.start()
    wait_until(lambda: any(r["path"] == "/successUri" for r in receiver.got), 60, "the success callback")
    assert all(r["signed"] for r in receiver.got)


def test_a_refused_subscriber_creates_nothing(ogc_stack, alice):
    from .ogc_support import counts

    before = counts(alice, ogc_stack["base"])
    r = alice.post(f"{ogc_stack['ogc']}/processes/sleeper/execution", timeout=30,
                   json={"inputs": {}, "subscriber": {"successUri": "http://10.1.2.3/hook"}})
    assert r.status_code == 400 and "subscriber.successUri" in r.text
    assert counts(alice, ogc_stack["base"]) == before
