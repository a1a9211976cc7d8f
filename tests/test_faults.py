"""Nothing lost: broker restarts, database outages, the API killed mid-upload, a full disk.
Each test really does it (a scratch RabbitMQ node, a cut TCP path to PostgreSQL, SIGKILL, a tiny tmpfs)."""
from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from caesar_rest import create_app
from caesar_rest.db import dispose_all

from .support import (
    API,
    REPO,
    create_pg_database,
    drop_pg_database,
    embedded_settings,
    free_port,
    http_status,
    job_processes,
    production_settings,
    start_api,
    start_worker,
    wait_state,
    wait_until,
)
from .tcpproxy import TcpProxy

SCRATCH_RABBIT = str(REPO / "scripts" / "scratch-rabbitmq.sh")


@pytest.fixture
def scratch_rabbit():
    port, dist = free_port(), free_port()
    folder = Path(tempfile.mkdtemp(prefix="caesar-rabbit-"))     # the rabbitmq user must reach it
    os.chmod(folder, 0o755)
    args = [str(folder), str(port), str(dist)]
    subprocess.run(["bash", SCRATCH_RABBIT, "start", *args], check=True, timeout=120)
    yield {"url": f"amqp://guest:guest@127.0.0.1:{port}//", "args": args}
    subprocess.run(["bash", SCRATCH_RABBIT, "stop", *args], timeout=120, check=False)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_db():
    url = create_pg_database()
    yield url
    drop_pg_database(url)


def test_broker_restart_while_submitting_loses_nothing(tmp_path, scratch_rabbit, pg_db):
    settings = production_settings(tmp_path / "var", pg_db, BROKER_URL=scratch_rabbit["url"])
    api, base = start_api(settings, tmp_path / "api.log")
    worker = start_worker(settings, ["local"], tmp_path / "worker.log", concurrency=2)
    accepted: list[str] = []
    refused: list[dict] = []
    other: list[tuple[int, str]] = []
    stop = threading.Event()

    def submit_forever() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = requests.post(f"{base}{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 0,
                                  "message": f"n{i}"}}, timeout=30)
            except requests.RequestException as exc:
                other.append((0, repr(exc)))
                continue
            if r.status_code == 202:
                accepted.append(r.json()["job_id"])
            elif r.status_code == 503:
                refused.append(r.json())
            else:
                other.append((r.status_code, r.text))
            time.sleep(0.05)

    try:
        thread = threading.Thread(target=submit_forever)
        thread.start()
        wait_until(lambda: len(accepted) >= 5, 60, "submissions accepted before the broker stops")
        before = len(accepted)
        subprocess.run(["bash", SCRATCH_RABBIT, "stop", *scratch_rabbit["args"]], check=True, timeout=120)
        wait_until(lambda: refused, 60, "a submission refused while the broker is down")
        subprocess.run(["bash", SCRATCH_RABBIT, "start", *scratch_rabbit["args"]], check=True, timeout=120)
        restarted = len(accepted)
        wait_until(lambda: len(accepted) >= restarted + 5, 60, "submissions accepted after the broker restart")
        stop.set()
        thread.join(60)
        assert other == [], other[:3]                        # never a 500, never a hang
        assert before > 0 and len(accepted) > before          # accepted before and after the restart
        assert refused and all("queue is unavailable" in r["message"] for r in refused)
        for job_id in accepted:                               # every 2xx runs, exactly once
            st = wait_state(http_status(base), job_id, timeout=120)
            assert st["state"] == "SUCCESS", st
            assert requests.get(f"{base}{API}/job/{job_id}/metadata").json()["attempts"] == 1
        total = requests.get(f"{base}{API}/jobs", params={"per_page": 1}).json()["total"]
        assert total == len(accepted)                          # refused submissions left nothing behind
    finally:
        stop.set()
        worker.stop()
        api.stop()


def test_database_outage_is_503_and_recovers(tmp_path, pg_db):
    proxy = TcpProxy(5432)
    url = pg_db.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = embedded_settings(tmp_path / "var", DATABASE_URL=url)
    app = create_app(settings)
    client = app.test_client()
    assert client.get(f"{API}/jobs").status_code == 200
    worker = start_worker(settings, ["local"], tmp_path / "worker.log", concurrency=1)
    try:
        running = client.post(f"{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 6}}).get_json()["job_id"]
        wait_state(lambda j: client.get(f"{API}/job/{j}/status").get_json(), running, ["RUNNING"], timeout=60)
        proxy.down()
        for response in (client.get(f"{API}/jobs"), client.get(f"{API}/job/{running}/status"),
                         client.post(f"{API}/job", json={"app": "sleeper"}),
                         client.post(f"{API}/upload", data={"file": (io.BytesIO(b"abc"), "a.txt")},
                                     content_type="multipart/form-data")):
            assert response.status_code == 503
            assert response.get_json()["message"] == "The job database is unavailable; try again shortly"
        assert [p for p in (Path(settings["ROOT"]) / "data").rglob("*") if p.is_file()] == []
        assert client.get("/health").status_code == 503
        assert job_processes(running)       # the job ends while the database is away:
        wait_until(lambda: not job_processes(running), 60, "the sleeper's end while the database is away")
        proxy.up()
        st = wait_state(lambda j: client.get(f"{API}/job/{j}/status").get_json(), running, timeout=90)
        assert st["state"] == "SUCCESS"     # its result was kept and recorded once the database came back
        assert client.get(f"{API}/jobs").get_json()["total"] == 1
        assert client.get("/health").status_code == 200
    finally:
        proxy.up() if proxy._listener is None else None
        worker.stop()
        dispose_all()
        proxy.down()


def test_api_killed_during_upload_registers_nothing(tmp_path):
    settings = embedded_settings(tmp_path / "var", STALE_UPLOAD_AFTER=0)
    api, base = start_api(settings, tmp_path / "api.log")
    port = int(base.rsplit(":", 1)[1])
    body_head = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.fits\"\r\n"
                 b"Content-Type: application/octet-stream\r\n\r\n")
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST " + API.encode() + b"/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 100000000\r\n\r\n" + body_head)
    for _ in range(40):
        sock.sendall(os.urandom(256 * 1024))
    data_dir = Path(settings["ROOT"]) / "data" / "anonymous"
    deadline = time.time() + 30
    while not list(data_dir.glob(".upload-*.part")) and time.time() < deadline:
        time.sleep(0.1)
    assert list(data_dir.glob(".upload-*.part"))           # the upload was under way, on disk
    os.killpg(api.pid, signal.SIGKILL)
    api.stop()
    sock.close()
    api, base = start_api(settings, tmp_path / "api2.log")
    try:
        assert requests.get(f"{base}{API}/fileids").json() == []
        assert list(data_dir.glob("*")) == []               # the part file is gone too
    finally:
        api.stop()


@pytest.fixture
def small_disks(tmp_path):
    """ROOT whose data/ and jobs/ are 8 MiB tmpfs mounts."""
    root = tmp_path / "var"
    mounts = [root / "data", root / "jobs"]
    for m in mounts:
        m.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(m)], check=True)
    yield root
    dispose_all()
    for m in mounts:
        subprocess.run(["umount", "-l", str(m)], check=False)


def test_full_data_disk_during_upload(small_disks):
    settings = embedded_settings(small_disks)
    client = create_app(settings).test_client()
    r = client.post(f"{API}/upload", data={"file": (io.BytesIO(os.urandom(12 * 1024 * 1024)), "big.fits")},
                    content_type="multipart/form-data")
    assert r.status_code == 507 and "disk is full" in r.get_json()["message"]
    assert list((small_disks / "data").rglob("*.*")) == []
    assert client.get(f"{API}/fileids").get_json() == []
    ok = client.post(f"{API}/upload", data={"file": (io.BytesIO(b"small"), "a.txt")},
                     content_type="multipart/form-data")
    assert ok.status_code == 200                             # space came back: the failed part was removed


def test_full_job_disk_fails_the_job_with_the_reason(small_disks, tmp_path):
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "filler.yml").write_text(
        "name: filler\ncommand: [python3, -c, 'open(\"big.bin\",\"wb\").write(bytes(64*1024*1024))']\n")
    settings = embedded_settings(small_disks, APPS_DIR=str(apps))
    app = create_app(settings)
    client = app.test_client()
    from workers.runner import Runner
    job_id = client.post(f"{API}/job", json={"app": "filler"}).get_json()["job_id"]
    assert Runner(app.config).run(job_id) == "FAILURE"
    st = client.get(f"{API}/job/{job_id}/status").get_json()
    assert "No space left on device" in st["status"]


def test_database_outage_of_twice_stale_after_ends_no_healthy_job(tmp_path, pg_db):
    """Issue 15's drill: the database cut for 2 x STALE_AFTER while jobs run, the reaper running every second on
    the worker's control queue. Before, the first reaper run after the outage found every heartbeat stale and
    killed the healthy jobs on its own host (FAILURE "Job lost"); now it waits out REAPER_DB_GRACE first, the
    heartbeat threads catch up, and every job ends SUCCESS, run once."""
    proxy = TcpProxy(5432)
    url = pg_db.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    stale_after = 3.0
    settings = embedded_settings(tmp_path / "var", DATABASE_URL=url, STALE_AFTER=stale_after, REAPER_INTERVAL=1,
                                 HEARTBEAT_INTERVAL=0.5)
    app = create_app(settings)
    client = app.test_client()
    worker = start_worker(settings, ["local"], tmp_path / "worker.log", concurrency=2, beat=True)
    try:
        jobs = [client.post(f"{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 14}}).get_json()["job_id"]
                for _ in range(2)]
        for job_id in jobs:
            wait_state(lambda j: client.get(f"{API}/job/{j}/status").get_json(), job_id, ["RUNNING"], timeout=60)
        proxy.down()
        time.sleep(2 * stale_after + 1)     # the outage itself is the drill's input, not a wait on a result
        assert all(job_processes(job_id) for job_id in jobs)       # the jobs ran on while the database was away
        proxy.up()
        for job_id in jobs:
            st = wait_state(lambda j: client.get(f"{API}/job/{j}/status").get_json(), job_id, timeout=90)
            assert st["state"] == "SUCCESS", st
            assert client.get(f"{API}/job/{job_id}/metadata").get_json()["attempts"] == 1
        log = worker.log()          # the pool's and the control worker's
        assert "Task caesar.reap[" in log and "'judged_staleness': 1" in log     # the reaper ran, and judged
    finally:
        proxy.up() if proxy._listener is None else None
        worker.stop()
        dispose_all()
        proxy.down()


def test_broker_restart_with_200_jobs_queued_runs_each_once(tmp_path, scratch_rabbit, pg_db):
    """Issue 15's drill: 200 jobs accepted while no worker runs, the broker restarted under them, then a worker:
    every job runs exactly once (durable queues, persistent messages, an atomic claim)."""
    settings = production_settings(tmp_path / "var", pg_db, BROKER_URL=scratch_rabbit["url"])
    client = create_app(settings).test_client()
    ids = [client.post(f"{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 0, "message": f"n{i}"}}
                       ).get_json()["job_id"] for i in range(200)]
    assert len(set(ids)) == 200
    subprocess.run(["bash", SCRATCH_RABBIT, "stop", *scratch_rabbit["args"]], check=True, timeout=120)
    subprocess.run(["bash", SCRATCH_RABBIT, "start", *scratch_rabbit["args"]], check=True, timeout=120)
    worker = start_worker(settings, ["local"], tmp_path / "worker.log", concurrency=2)
    try:
        status = lambda j: client.get(f"{API}/job/{j}/status").get_json()
        for job_id in ids:
            assert wait_state(status, job_id, timeout=300)["state"] == "SUCCESS"
        for job_id in ids:
            meta = client.get(f"{API}/job/{job_id}/metadata").get_json()
            assert meta["attempts"] == 1 and [e["state"] for e in meta["events"]].count("RUNNING") == 1
    finally:
        worker.stop()
        dispose_all()


@pytest.mark.parametrize("broker", ["rabbitmq", "filesystem"])
def test_a_frozen_worker_is_found_by_the_broker_view_long_before_stale_after(tmp_path, pg_db, broker):
    """Issue 15: a worker the broker no longer sees is gone. The pool's processes are frozen (SIGSTOP: alive, so
    the same-host pid check cannot tell, as for a worker on another host), its job runs on in its sandbox. With
    STALE_AFTER 300 s the heartbeat rule alone would leave the job RUNNING for five minutes (the code before this
    rule did); the reaper's ping misses the frozen node twice in a row, the job ends FAILURE naming why, and its
    orphaned process is stopped. Real workers, real RabbitMQ or the embedded filesystem broker, real PostgreSQL."""
    extra = dict(STALE_AFTER=300, REAPER_INTERVAL=1, HEARTBEAT_INTERVAL=0.5, REMOTE_POLL_INTERVAL=0.5,
                 DB_IDLE_IN_TRANSACTION_TIMEOUT=5)     # frozen mid-transaction, the pool frees the job's row in 5 s
    settings = production_settings(tmp_path / "var", pg_db, **extra) if broker == "rabbitmq" else \
        embedded_settings(tmp_path / "var", DATABASE_URL=pg_db, **extra)
    client = create_app(settings).test_client()
    worker = start_worker(settings, ["local"], tmp_path / "worker.log", concurrency=1, beat=True, name="frozen")
    try:
        job_id = client.post(f"{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 120}}).get_json()["job_id"]
        wait_state(lambda j: client.get(f"{API}/job/{j}/status").get_json(), job_id, ["RUNNING"], timeout=60)
        assert job_processes(job_id)
        frozen_at = time.monotonic()
        os.killpg(worker.popen.pid, signal.SIGSTOP)     # the pool: main process and its children; not the reaper's
        try:
            st = wait_state(lambda j: client.get(f"{API}/job/{j}/status").get_json(), job_id, timeout=60)
            took = time.monotonic() - frozen_at
        finally:
            os.killpg(worker.popen.pid, signal.SIGCONT)
        assert st["state"] == "FAILURE", st
        assert st["status"].startswith("Job lost: its worker is gone from the broker while it was RUNNING"), st
        assert took < 60 < settings["STALE_AFTER"]
        wait_until(lambda: not job_processes(job_id), 30, "the orphaned sleeper stopped")
        # The thawed worker finds its job ended by someone else: it stays FAILURE, run once.
        time.sleep(2)
        meta = client.get(f"{API}/job/{job_id}/metadata").get_json()
        assert meta["state"] == "FAILURE" and meta["attempts"] == 1
    finally:
        worker.stop()
        dispose_all()


def test_database_outage_of_twice_stale_after_ends_no_healthy_local_or_remote_job(tmp_path, pg_db, condor_pool):
    """The same drill with a remote job beside the local one (issue 15 asks for both): a job on the real HTCondor
    pool, followed by its poll chain, and a local sleeper, while the database is cut for 2 x STALE_AFTER. Both end
    SUCCESS, each in one attempt, the remote one with its output fetched."""
    from .backends.htcondor_fixtures import condor_options, write_apps as condor_apps

    proxy = TcpProxy(5432)
    url = pg_db.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    stale_after = 3.0
    settings = embedded_settings(tmp_path / "var", DATABASE_URL=url, STALE_AFTER=stale_after, REAPER_INTERVAL=1,
                                 HEARTBEAT_INTERVAL=0.5, APPS_DIR=str(condor_apps(tmp_path / "apps")),
                                 BACKENDS={"local": {}, "condor": condor_options(condor_pool)})
    client = create_app(settings).test_client()
    worker = start_worker(settings, ["local", "condor"], tmp_path / "worker.log", concurrency=2, beat=True)
    try:
        jobs = {backend: client.post(f"{API}/job", json={"app": "sleeper", "backend": backend, "job_inputs": {
            "seconds": 14, "message": f"on {backend}"}}).get_json()["job_id"] for backend in ("local", "condor")}
        for job_id in jobs.values():
            wait_state(lambda j: client.get(f"{API}/job/{j}/status").get_json(), job_id, ["RUNNING"], timeout=180)
        proxy.down()
        time.sleep(2 * stale_after + 1)     # the outage itself is the drill's input, not a wait on a result
        proxy.up()
        for backend, job_id in jobs.items():
            st = wait_state(lambda j: client.get(f"{API}/job/{j}/status").get_json(), job_id, timeout=180)
            assert st["state"] == "SUCCESS", (backend, st)
            meta = client.get(f"{API}/job/{job_id}/metadata").get_json()
            assert meta["attempts"] == 1 and meta["backend"] == backend
            assert "sleeper.txt" in {o["path"] for o in meta["outputs"]}, meta["outputs"]
    finally:
        proxy.up() if proxy._listener is None else None
        worker.stop()
        dispose_all()
        proxy.down()


HOLDER = """
import os, signal, sys
from sqlalchemy import text
from caesar_rest import db
url, job_id, idle = sys.argv[1], sys.argv[2], float(sys.argv[3])
db.configure({"DATABASE_URL": url, "DB_IDLE_IN_TRANSACTION_TIMEOUT": idle})
with db.session_scope(url) as s:
    s.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
    print("locked", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)      # frozen in the middle of its transaction, the row locked
"""


@pytest.mark.parametrize("idle", [2.0, 0.0])
def test_a_frozen_process_holding_a_jobs_row_keeps_it_no_longer_than_the_idle_limit(tmp_path, pg_db, idle):
    """A worker frozen (or cut off) inside a transaction holds its job's row lock: before, every later writer of
    that row (the reaper ending the job, a cancel) waited for as long as the process stayed frozen, and the reaper
    with it (seen in the frozen-pool drill). PostgreSQL now ends a transaction of ours idle for
    DB_IDLE_IN_TRANSACTION_TIMEOUT (a server-side limit: it holds whatever the client does), and the row is free.
    idle 0 is the old behaviour: the writer is still blocked when its own lock_timeout (8 s) runs out."""
    settings = production_settings(tmp_path / "var", pg_db, DB_IDLE_IN_TRANSACTION_TIMEOUT=idle)
    client = create_app(settings).test_client()
    job_id = client.post(f"{API}/job", json={"app": "sleeper"}).get_json()["job_id"]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, pg_db, job_id, str(idle)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        wait_until(lambda: Path(f"/proc/{holder.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T", 10,
                   "the holder frozen")
        from sqlalchemy import text
        from sqlalchemy.exc import OperationalError

        from caesar_rest.db import session_scope
        started = time.monotonic()
        try:
            with session_scope(pg_db) as s:
                s.execute(text("SET LOCAL lock_timeout = '8s'"))
                s.execute(text("UPDATE jobs SET status = 'written past a frozen holder' WHERE id = :id"),
                          {"id": job_id})
            waited, blocked = time.monotonic() - started, False
        except OperationalError as exc:
            waited, blocked = time.monotonic() - started, "lock timeout" in str(exc)
        if idle:
            assert not blocked and waited < 6, f"the row stayed locked for {waited:.1f} s"
            assert client.get(f"{API}/job/{job_id}/status").get_json()["status"] == "written past a frozen holder"
        else:
            assert blocked and waited >= 7.5
    finally:
        holder.kill()
        holder.wait()
        dispose_all()
