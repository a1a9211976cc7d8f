"""Outputs kept until safe, on a real Pulsar server (issue 15): a download of an output cut mid-stream, between the
worker and Pulsar, by an HTTP relay that sends half the body and hangs up. Cut once: the fetch is tried again and
the job succeeds with its whole tarball, the remote job removed after the end. Cut every time: the job fails
naming the copy kept on Pulsar, which is still there, and `refetch` brings the outputs once the path is whole."""
from __future__ import annotations

import io
import secrets
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from caesar_rest import create_app
from caesar_rest.db import dispose_all
from workers import kept

from ..support import API, RABBIT, client_status, embedded_settings, start_worker, wait_state, wait_until
from .pulsar_fixtures import APP_BIN, _apps_dir


class CuttingRelay:
    """Forwards every request to a Pulsar server; while `cuts` > 0, a download of a job's output file (GET
    /jobs/<id>/files, type output_workdir) gets its full Content-Length but half its body, then the connection
    closes: a download broken off mid-stream."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.cuts = 0
        self.corruptions = 0                  # while > 0: an output download arrives whole but with a byte changed
        self.cut_names: list[str] = []
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                r = requests.request(self.command, relay.upstream + self.path, data=body, headers=headers,
                                     timeout=60)
                data = r.content
                output = self.command == "GET" and "/files" in self.path and "type=output_workdir" in self.path
                cut = relay.cuts > 0 and output and len(data) > 1
                if relay.corruptions > 0 and output and data:
                    relay.corruptions -= 1
                    relay.cut_names.append(self.path)
                    data = bytes([data[0] ^ 0x20]) + data[1:]
                self.send_response(r.status_code)
                for key, value in r.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                if cut:
                    relay.cuts -= 1
                    relay.cut_names.append(self.path)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._relay()

            def do_POST(self) -> None:
                self._relay()

            def do_PUT(self) -> None:
                self._relay()

            def do_DELETE(self) -> None:
                self._relay()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cut_stack(pulsar_servers, tmp_path):
    p1 = pulsar_servers["p1"]
    p1.start()
    relay = CuttingRelay(p1.url)
    servers = {"cut": {"url": relay.url, "private_token": p1.token, "app_path": APP_BIN}}
    backends = {"local": {}, "pulsar": {"servers": servers, "default_server": "cut", "retries": 0}}
    settings = embedded_settings(tmp_path / "var", BACKENDS=backends, APPS_DIR=str(_apps_dir(tmp_path / "apps")),
                                 BROKER_URL=RABBIT, QUEUE_PREFIX=f"t{secrets.token_hex(4)}.", REMOTE_POLL_INTERVAL=0.5,
                                 FETCH_ATTEMPTS=2)
    app = create_app(settings)
    worker = start_worker(settings, ["pulsar"], tmp_path / "worker.log", concurrency=2)
    try:
        yield app.config, app.test_client(), relay, p1
    finally:
        worker.stop()
        relay.close()
        dispose_all()


MESSAGE = "kept until safe " * 200


def run_sleeper(client) -> tuple[str, dict]:
    r = client.post(f"{API}/job", json={"app": "sleeper", "backend": "pulsar",
                                        "job_inputs": {"seconds": 0, "message": MESSAGE}})
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["job_id"]
    return job_id, wait_state(client_status(client), job_id, timeout=120)


def test_a_download_cut_once_is_fetched_again_and_the_tarball_is_whole(cut_stack):
    _settings, client, relay, p1 = cut_stack
    relay.cuts = 1
    job_id, st = run_sleeper(client)
    assert st["state"] == "SUCCESS", st
    assert relay.cut_names, "the relay never cut a download"
    meta = client.get(f"{API}/job/{job_id}/metadata").get_json()
    sizes = {o["path"]: o["size_bytes"] for o in meta["outputs"]}
    assert sizes["sleeper.txt"] == len(MESSAGE) + 1           # the whole file, not the half the relay let through
    r = client.get(f"{API}/job/{job_id}/output")
    with tarfile.open(fileobj=io.BytesIO(r.data), mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/sleeper.txt"))
        assert tar.extractfile(member).read() == f"{MESSAGE}\n".encode()
    wait_until(lambda: not p1.job_dir(meta["handle"].rpartition(":")[2]).exists(), 30,
               "the Pulsar job's removal, after the end was recorded")


def test_an_output_altered_on_the_way_is_caught_by_its_sha256_and_fetched_again(cut_stack):
    """The job's command lists its files' sha256 on the Pulsar server; a copy that arrives with the right length
    but a changed byte is refused and downloaded again. Before, the altered file was the job's output."""
    _settings, client, relay, _p1 = cut_stack
    relay.corruptions = 1
    job_id, st = run_sleeper(client)
    assert st["state"] == "SUCCESS", st
    assert relay.cut_names, "the relay never altered a download"
    r = client.get(f"{API}/job/{job_id}/output")
    with tarfile.open(fileobj=io.BytesIO(r.data), mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/sleeper.txt"))
        assert tar.extractfile(member).read() == f"{MESSAGE}\n".encode()


def test_downloads_cut_every_time_keep_the_remote_copy_until_refetched(cut_stack):
    settings, client, relay, p1 = cut_stack
    relay.cuts = 1000
    job_id, st = run_sleeper(client)
    assert st["state"] == "FAILURE", st
    assert "copy of the job is kept" in st["status"] and f"caesar-rest job refetch {job_id}" in st["status"]
    meta = client.get(f"{API}/job/{job_id}/metadata").get_json()
    pulsar_id = meta["handle"].rpartition(":")[2]
    assert meta["kept_remote"]["handle"] == meta["handle"]
    assert p1.job_dir(pulsar_id).exists()         # the old runner deleted the Pulsar job whatever the fetch did
    relay.cuts = 0
    done = kept.refetch(settings, job_id)
    assert done["outputs"] >= 1 and "cleanup_error" not in done
    meta = client.get(f"{API}/job/{job_id}/metadata").get_json()
    assert "sleeper.txt" in {o["path"] for o in meta["outputs"]}
    assert not p1.job_dir(pulsar_id).exists()


def test_staging_a_big_input_for_longer_than_stale_after_is_not_declared_lost(pulsar_servers, tmp_path):
    """Issue 15's drill: a 2 GiB input sent to a real Pulsar server while STALE_AFTER is 1 s and the reaper runs
    every second. Before, the claim's heartbeat went stale during the upload and the reaper failed the job ("Job
    lost") while the worker went on staging it. Now the worker's heartbeat thread keeps it alive throughout."""
    import hashlib

    from ..support import start_api

    p1 = pulsar_servers["p1"]
    p1.start()
    servers = {"p1": {"url": p1.url, "private_token": p1.token, "app_path": APP_BIN}}
    settings = embedded_settings(tmp_path / "var", APPS_DIR=str(_apps_dir(tmp_path / "apps")), BROKER_URL=RABBIT,
                                 QUEUE_PREFIX=f"t{secrets.token_hex(4)}.", REMOTE_POLL_INTERVAL=0.5,
                                 STALE_AFTER=1, HEARTBEAT_INTERVAL=0.2, REAPER_INTERVAL=1, REAPER_DB_GRACE=0,
                                 BACKENDS={"local": {}, "pulsar": {"servers": servers, "default_server": "p1"}})
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:                  # 2 GiB, written in blocks (not held in memory)
        block = hashlib.sha256(b"caesar").digest() * 32768        # 1 MiB
        for _ in range(2048):
            fh.write(block)
    api, base = start_api(settings, tmp_path / "api.log")
    worker = start_worker(settings, ["pulsar"], tmp_path / "worker.log", concurrency=1, beat=True)
    try:
        with open(big, "rb") as fh:
            uploaded = requests.post(f"{base}{API}/upload", files={"file": ("big.bin", fh)}, timeout=600).json()
        r = requests.post(f"{base}{API}/job", json={"app": "checksum", "backend": "pulsar",
                                                    "job_inputs": {"inputfile": uploaded["uuid"],
                                                                   "algorithm": "md5"}}, timeout=30)
        job_id = r.json()["job_id"]
        st = wait_state(lambda j: requests.get(f"{base}{API}/job/{j}/status", timeout=30).json(), job_id,
                        timeout=600)
        assert st["state"] == "SUCCESS", st
        meta = requests.get(f"{base}{API}/job/{job_id}/metadata", timeout=30).json()
        events = {e["state"]: e["at"] for e in meta["events"]}
        from datetime import datetime
        staging = (datetime.fromisoformat(events["RUNNING"].rstrip("Z")) -
                   datetime.fromisoformat(events["STARTED"].rstrip("Z"))).total_seconds()
        assert staging > 1, f"staging took {staging:.2f} s, not longer than STALE_AFTER: the drill proves nothing"
        assert meta["attempts"] == 1 and "lost" not in st["status"].lower()
        assert "Task caesar.reap[" in worker.log()              # the reaper ran while it staged
        print(f"\n2 GiB staged to Pulsar in {staging:.1f} s with STALE_AFTER 1 s: not declared lost")
    finally:
        worker.stop()
        api.stop()
        dispose_all()
