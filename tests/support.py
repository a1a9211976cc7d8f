"""Test helpers: stacks (embedded / production), real worker and API processes, waiting for job states."""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
API = "/caesar/api/v1.0"
TERMINAL = ("SUCCESS", "FAILURE", "TIMED-OUT", "CANCELED", "ABORTED")
RABBIT = os.environ.get("CAESAR_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
REDIS = os.environ.get("CAESAR_TEST_REDIS", "redis://127.0.0.1:6379/14")
PG_ADMIN = os.environ.get("CAESAR_TEST_PG", "postgresql+psycopg://root@127.0.0.1:5432/test")


#: Ports Chromium refuses to load (ERR_UNSAFE_PORT) above 1023: this machine hands out ephemeral ports from 1024,
#: and a test server on one of these made a browser test fail.
BROWSER_BLOCKED_PORTS = frozenset({1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666,
                                   6667, 6668, 6669, 6679, 6697, 10080})


def free_port() -> int:
    """A free loopback port, never one a browser refuses."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in BROWSER_BLOCKED_PORTS:
            return port


def embedded_settings(root: Path, **extra: Any) -> dict[str, Any]:
    """The embedded default: SQLite + filesystem broker + file result store, all under root."""
    return {"ROOT": str(root), "JOB_POLL_INTERVAL": 0.1, "REMOTE_POLL_INTERVAL": 0.5, **extra}


def create_pg_database() -> str:
    """A fresh PostgreSQL database for one test session; returns its SQLAlchemy URL."""
    import psycopg

    name = f"caesar_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    import psycopg

    from caesar_rest.db import dispose_all

    dispose_all()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def production_settings(root: Path, database_url: str, **extra: Any) -> dict[str, Any]:
    """RabbitMQ + Redis + PostgreSQL, with queue names unique to this run so parallel runs never mix."""
    return {"ROOT": str(root), "BROKER_URL": RABBIT, "RESULT_BACKEND": REDIS, "DATABASE_URL": database_url,
            "QUEUE_PREFIX": f"t{uuid.uuid4().hex[:8]}.", "JOB_POLL_INTERVAL": 0.1, "REMOTE_POLL_INTERVAL": 0.5,
            **extra}


def settings_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """CAESAR_* environment for child processes (worker, API) equal to a settings mapping."""
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("CAESAR_")}
    for key, value in settings.items():
        if key in ("DATA_DIR", "JOBS_DIR"):
            continue
        env[f"CAESAR_{key}"] = value if isinstance(value, str) else json.dumps(value)
    env["PYTHONPATH"] = str(REPO)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


class Proc:
    """A child process (worker or API server) with its log, stopped on exit."""

    def __init__(self, cmd: list[str], env: Mapping[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115  (the child writes to it until stop() closes it)
        self.popen = subprocess.Popen(cmd, env=dict(env), cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self.companions: list[Proc] = []      # stopped with it, their logs read with its own (the control worker)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return "".join(p.log_path.read_text(errors="replace") for p in [self, *self.companions])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Signal the main process (a Celery worker then stops its own pool), then kill what is left."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.popen.poll() is None:
            self.popen.wait()
        self._log.close()
        for companion in self.companions:
            companion.stop(sig, timeout)


def start_worker(settings: Mapping[str, Any], queues: Iterable[str], log: Path, concurrency: int = 2,
                 beat: bool = False, name: str | None = None, wrap: Sequence[str] = ()) -> Proc:
    """A worker pool on queues; with beat, a second worker (one slot, its own process group) serves the control
    queue and schedules the reaper there, as caesar-rest run and production do: never behind the pool's jobs.
    Killing the pool's process group leaves the reaper running, as a dead worker host's pool would. `wrap` goes
    before the pool's command (faketime, say), not the control worker's."""
    control = start_celery_worker(settings, ["control"], log.with_suffix(".control.log"), 1, True,
                                  f"control-{name}" if name else None) if beat else None
    proc = start_celery_worker(settings, queues, log, concurrency, False, name, wrap)
    if control is not None:
        proc.companions.append(control)
    return proc


def start_celery_worker(settings: Mapping[str, Any], queues: Iterable[str], log: Path, concurrency: int, beat: bool,
                        name: str | None, wrap: Sequence[str] = ()) -> Proc:
    """One celery worker process on queues (with beat: scheduling the reaper too), once it says it is ready."""
    prefix = settings.get("QUEUE_PREFIX", "")
    cmd = [*wrap, sys.executable, "-m", "celery", "-A", "workers.celery", "worker", "--loglevel", "INFO", "-Q",
           ",".join(prefix + q for q in queues), "--concurrency", str(concurrency), "--without-gossip",
           "--without-mingle", "--hostname", f"{name or 'w' + uuid.uuid4().hex[:6]}@%h"]
    if beat:
        cmd += ["--beat", "--schedule", str(Path(settings["ROOT"]) / "beat-schedule")]
    proc = Proc(cmd, settings_env(settings), log)
    deadline = time.time() + 60
    while time.time() < deadline:
        if "ready." in proc.log():
            return proc
        if proc.popen.poll() is not None:
            raise RuntimeError(f"worker exited at start:\n{proc.log()}")
        time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"worker not ready in 60 s:\n{proc.log()}")


def start_api(settings: Mapping[str, Any], log: Path, port: int | None = None) -> tuple[Proc, str]:
    """The API over real HTTP (threaded server) in its own process; returns (process, base URL)."""
    port = port or free_port()
    proc = Proc([sys.executable, "-m", "caesar_rest.cli", "serve", "--port", str(port)], settings_env(settings), log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            requests.get(base + "/health", timeout=1)
            return proc, base
        except requests.ConnectionError:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"API exited at start:\n{proc.log()}") from None
            time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"API not up in 60 s:\n{proc.log()}")


def wait_state(get_status, job_id: str, states: Iterable[str] = TERMINAL, timeout: float = 60) -> dict:
    """Poll a status getter (job_id -> dict) until the state is one of states."""
    states = tuple(states)
    deadline = time.time() + timeout
    last: dict = {}
    while time.time() < deadline:
        last = get_status(job_id)
        if last.get("state") in states:
            return last
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout} s; last status {last}")


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll condition() until it gives a true value, and return that; fail naming what was awaited after timeout.
    A test waits on a state it can observe, never for a fixed time that a slow machine would outrun."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen in {timeout} s")
        time.sleep(interval)
    return value


def client_status(client):
    return lambda job_id: client.get(f"{API}/job/{job_id}/status").get_json()


def http_status(base: str):
    return lambda job_id: requests.get(f"{base}{API}/job/{job_id}/status", timeout=10).json()


def upload(client, content: bytes, name: str = "data.txt", tag: str | None = None) -> dict:
    data: dict[str, Any] = {"file": (io.BytesIO(content), name)}
    if tag is not None:
        data["tag"] = tag
    response = client.post(f"{API}/upload", data=data, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def job_processes(job_id: str) -> list[int]:
    """Processes anywhere on this machine running a caesar job: their environment names it."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if f"CAESAR_JOB_ID={job_id}".encode() in fh.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


#: The shipped sleeper, retried when its worker dies (tests/test_retries.py, bench/drills.py).
RETRYING_SLEEPER = """
name: sleeper-retry
version: "1.0"
command: [caesar-sleeper]
backends: [local]
resources: {time_limit: 600}
outputs: [sleeper.txt]
retries: {max: 2, on: [lost]}
options:
  seconds: {type: float, default: 1.0}
"""


def write_apps(directory: Path, extra: Mapping[str, str]) -> Path:
    """An APPS_DIR with the shipped apps plus test apps ({name: YAML text})."""
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    for path in (REPO / "config" / "apps").glob("*.yml"):
        shutil.copy(path, directory / path.name)
    for name, text in extra.items():
        (directory / f"{name}.yml").write_text(text.lstrip())
    return directory


def curl(*args: str, cwd: Path, timeout: float = 300) -> str:
    """curl -sS with these arguments; its standard output (the test fails on a curl error)."""
    done = subprocess.run(["curl", "-sS", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def seed_walkthrough(base: str, workdir: Path) -> dict[str, Any]:
    """The original caesar-rest README's curl examples, as written, against a running service: upload a FITS
    image, download it back, a missing uuid (curl --fail exits 22), submit sfinder with the README's options,
    follow its status to the end, fetch the output tarball. Checks what every stack must give; returns
    {upload, job, status, names (base names in the tarball)} for the caller's own checks."""
    import json
    import tarfile

    from .apps.fitsgen import default_sources, make_image

    make_image(workdir / "VGPS_cont_MOS017.fits", sources=default_sources())
    up = json.loads(curl("-X", "POST", "-H", "Content-Type: multipart/form-data",
                         "-F", "file=@VGPS_cont_MOS017.fits", "--url", f"{base}{API}/upload", cwd=workdir))
    assert up["status"] == "File uploaded with success" and up["format"] == "fits", up
    curl("-X", "GET", "--fail", "-o", "data.fits", "--url", f"{base}{API}/download-id/{up['uuid']}", cwd=workdir)
    assert (workdir / "data.fits").read_bytes() == (workdir / "VGPS_cont_MOS017.fits").read_bytes()
    missing = subprocess.run(["curl", "-sS", "-X", "GET", "--fail", "-o", "nope.fits", "--url",
                              f"{base}{API}/download-id/67a49bf7555b41739095681bf52a1f99"], cwd=workdir, check=False)
    assert missing.returncode == 22 and not (workdir / "nope.fits").exists()
    body = json.dumps({"app": "sfinder", "job_inputs": {
        "inputfile": up["path"], "run": True, "no-logredir": True, "envfile": "/home/riggi/Software/setvars.sh",
        "no-mpi": True, "no-nestedsearch": True, "no-extendedsearch": True}})
    job = json.loads(curl("-X", "POST", "-H", "Content-Type: application/json", "-d", body,
                          "--url", f"{base}{API}/job", cwd=workdir))
    assert job["status"] == "Job submitted with success" and job["app"] == "sfinder", job
    status = wait_state(lambda j: json.loads(curl("-X", "GET", "--url", f"{base}{API}/job/{j}/status", cwd=workdir)),
                        job["job_id"], timeout=120)
    assert status["state"] == "SUCCESS" and status["exit_status"] == 0, status
    curl("-X", "GET", "--fail", "-o", "job_output.tar.gz", "--url", f"{base}{API}/job/{job['job_id']}/output",
         cwd=workdir)
    with tarfile.open(workdir / "job_output.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"VGPS_cont_MOS017_catalog.csv", "stdout.log", "caesar_job.json"} <= names, names
    return {"upload": up, "job": job, "status": status, "names": names}


def run_watching_the_end(app, job_id: str, runner=None) -> tuple[str, dict[str, Any], dict[str, bytes]]:
    """Run job_id in-process (workers.runner.Runner) while every database commit is watched: at the first one after
    which the job is finished, its state and extra are read and its tarball is fetched through the API, as a client
    polling for the end would. Returns (state, extra, {name in the tarball: bytes}) as they were at that moment.
    runner: the Runner to use (default: one with the app's settings)."""
    import tarfile

    from sqlalchemy import event, select
    from sqlalchemy.orm import Session

    from caesar_rest.db import engine_for
    from caesar_rest.models import TERMINAL_STATES, Job
    from workers.runner import Runner

    client, seen, busy = app.test_client(), [], []

    def after_commit(_session) -> None:
        if seen or busy:
            return
        busy.append(1)
        try:
            # a connection of its own: the session that just committed cannot run SQL here
            with engine_for(app.config["DATABASE_URL"]).connect() as conn:
                state, extra = conn.execute(select(Job.state, Job.extra).where(Job.id == job_id)).one()
            if state in TERMINAL_STATES:
                response = client.get(f"{API}/job/{job_id}/output")
                assert response.status_code == 200, response.get_data(as_text=True)
                with tarfile.open(fileobj=io.BytesIO(response.data), mode="r:gz") as tar:
                    files = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar if m.isfile()}
                seen.append((state, dict(extra or {}), files))
        finally:
            busy.clear()

    event.listen(Session, "after_commit", after_commit)
    try:
        (runner or Runner(app.config)).run(job_id)
    finally:
        event.remove(Session, "after_commit", after_commit)
    assert seen, f"job {job_id} never finished"
    return seen[0]


def full_health(client) -> dict:
    """The checks behind /health in full, as an authenticated admin sees them (anonymous callers, and everyone
    under AUTH_MODE none, get each check's status only)."""
    from caesar_rest.api.ops import run_checks

    app = client.application
    return run_checks(app.config, app.extensions["celery"])[1]
