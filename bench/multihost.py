"""`python -m bench.multihost` (a phase of `make bench`; MULTIHOST_BENCH=0 leaves it out): three hosts without a
shared filesystem (issue 18).

Host 1 runs the API (gunicorn with the repository's gunicorn.conf.py), hosts 2 and 3 a Celery pool of the local
backend each, plus a control worker each; host 2's runs the one beat (which schedules the reaper). Each host is a
network namespace on a bridge with its own mount namespace, hostname and a private tmpfs over the one ROOT path
(tests/netns.py). RabbitMQ, Redis and PostgreSQL are reached at the bridge's address (forwarded to their loopback
listeners), moto's S3 server listens on it; S3 is the only storage the hosts share (STORAGE s3): uploads, and the
finished job directories the API host streams back as tar.gz.

Phases:
  throughput  the same burst of jobs with one worker host, then with two: jobs/s from the first POST /job to
              the last end, for no-op jobs (the service's own work: bound by the 2 cores every "host" shares)
              and for jobs sleeping --sleep s (bound by the pools' slots, which a second host doubles)
  drill       --jobs digest jobs on both hosts, host 3's workers SIGKILLed once a third have ended: every job
              ends with a reason (lost attempts retried on host 2, or FAILURE "Job lost" for the app without
              retries), both hosts ran some, every output's tar.gz comes from the API host with the right files"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from tests.netns import Fabric, Host
from tests.support import (
    API,
    TERMINAL,
    Proc,
    create_pg_database,
    drop_pg_database,
    production_settings,
    settings_env,
    wait_until,
)

from .report import Figure, machine, table, write_json
from .stack import APPS_DIR, GUNICORN, cpu_seconds, tree

API_PORT = 8000
S3_CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

#: A job that reads an uploaded file staged from S3, writes its digest and a tag of the caller's, then sleeps.
DIGEST = """
name: {name}
version: "1.0"
description: sha256 of an uploaded file to digest.txt, a tag to tag.txt and stdout, then a sleep (the drill)
command: [sh, -c, 'sha256sum "$0" > digest.txt && echo "$2" > tag.txt && echo "$2" && sleep "$1"']
backends: [local]
default_backend: local
resources: {{cpus: 1, time_limit: 300}}
outputs: [digest.txt, tag.txt]
{retries}
options:
  inputfile: {{type: file, required: true, style: positional}}
  seconds: {{type: float, default: 1.0, min: 0, max: 60, style: positional}}
  tag: {{type: string, required: true, style: positional}}
"""
SLEEP = """
name: nap
version: "1.0"
description: sleeps (the multi-host bench's slot-bound job)
command: [sleep]
backends: [local]
default_backend: local
resources: {cpus: 1, time_limit: 120}
options:
  seconds: {type: float, default: 1.0, min: 0, max: 60, style: positional}
"""


def write_apps(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "noop.yml").write_text((APPS_DIR / "noop.yml").read_text())
    (directory / "nap.yml").write_text(SLEEP.lstrip())
    (directory / "digest.yml").write_text(DIGEST.format(name="digest", retries="retries: {max: 2, on: [lost]}"))
    (directory / "digest-once.yml").write_text(DIGEST.format(name="digest-once", retries=""))
    return directory


def _busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class Cluster:
    """The fabric, a fresh database, moto's S3 and the three hosts; stop() removes all of it."""

    def __init__(self, scratch: Path | None = None, concurrency: int = 2, keep: bool = False,
                 **settings: Any) -> None:
        self.keep = keep
        self.base_dir = Path(tempfile.mkdtemp(prefix="caesar-multihost-", dir=scratch))
        self.logs = self.base_dir / "logs"
        self.logs.mkdir()
        self.root = self.base_dir / "root"     # the same path on every host, a tmpfs of its own on each
        self.concurrency = concurrency
        self.db_url = ""           # set once the database exists
        self.moto: Proc | None = None
        self.workers: dict[str, list[Proc]] = {}
        self.fabric = Fabric(self.base_dir / "net", forward={5672: 5672, 5432: 5432, 6379: 6379})
        try:
            self._start(settings)
        except BaseException:
            self.stop()
            raise

    def _start(self, extra: dict[str, Any]) -> None:
        import boto3

        gw = self.fabric.gateway
        self.db_url = create_pg_database()
        from caesar_rest import db

        db.upgrade(self.db_url)
        s3_port = 5000
        self.moto = Proc([str(Path(sys.executable).parent / "moto_server"), "-H", gw, "-p", str(s3_port)],
                         {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
                         self.logs / "moto.log")
        self.fabric.own(self.moto.pid)
        endpoint = f"http://{gw}:{s3_port}"
        wait_until(lambda: self._up(endpoint + "/moto-api/"), 60, "moto's server")
        bucket = f"caesar-mh-{self.fabric.tag}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **S3_CREDS).create_bucket(Bucket=bucket)
        hosts_db = self.db_url.replace("127.0.0.1:5432", f"{gw}:5432")
        self.settings = production_settings(
            self.root, hosts_db, BROKER_URL=f"amqp://guest:guest@{gw}:5672//", RESULT_BACKEND=f"redis://{gw}:6379/14",
            APPS_DIR=str(write_apps(self.base_dir / "apps")), BACKENDS={"local": {}}, ALLOW_ANONYMOUS=True,
            STORAGE="s3", S3_BUCKET=bucket, S3_PREFIX="caesar/", S3_ENDPOINT_URL=endpoint, S3_REGION="us-east-1",
            S3_ACCESS_KEY_ID="testing", S3_SECRET_ACCESS_KEY="testing",
            # the reliability drills' clock (bench/drills.py): a gone host is found within seconds
            STALE_AFTER=10, REAPER_INTERVAL=1, HEARTBEAT_INTERVAL=0.5, **extra)
        del self.settings["JOB_POLL_INTERVAL"]      # production_settings tunes the tests'; the default here
        # What the orchestrator (the root namespace) uses: the same service, reached on loopback.
        self.local_settings = {**self.settings, "DATABASE_URL": self.db_url,
                               "BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"}
        self.hosts: dict[str, Host] = {name: self.fabric.add_host(name, self.root)
                                       for name in ("host1", "host2", "host3")}
        self.api = self.hosts["host1"].spawn(
            [str(GUNICORN), "-c", "gunicorn.conf.py", "caesar_rest.wsgi:app"],
            {**settings_env(self.settings), "CAESAR_WSGI_SOCKET": f"0.0.0.0:{API_PORT}",
             "CAESAR_WSGI_PROCESSES": "2", "CAESAR_WSGI_THREADS": "4"}, self.logs / "gunicorn-host1.log")
        self.base = f"http://{self.hosts['host1'].address}:{API_PORT}"
        wait_until(lambda: self._up(self.base + "/health"), 60, "the API on host 1")

    @staticmethod
    def _up(url: str) -> bool:
        try:
            return requests.get(url, timeout=2).status_code < 500
        except requests.RequestException:
            return False

    # ---- worker hosts --------------------------------------------------------------------------------------
    def _worker(self, host: Host, queue: str, concurrency: int, beat: bool) -> Proc:
        prefix = self.settings["QUEUE_PREFIX"]
        name = f"{queue}-{host.name}"
        cmd = [sys.executable, "-m", "celery", "-A", "workers.celery", "worker", "--loglevel", "INFO",
               "-Q", prefix + queue, "--concurrency", str(concurrency), "--without-gossip", "--without-mingle",
               "--hostname", f"{name}@%h"]
        if beat:
            cmd += ["--beat", "--schedule", str(self.root / "beat-schedule")]
        return host.spawn(cmd, settings_env(self.settings), self.logs / f"worker-{name}.log")

    def start_workers(self, name: str, beat: bool) -> None:
        """The host's pool on the local queue and its control worker (reaper runs, notifications), ready; with
        beat, the control worker also schedules the reaper (one beat in all, as the README's Production says)."""
        host = self.hosts[name]
        procs = [self._worker(host, "local", self.concurrency, False), self._worker(host, "control", 1, beat)]
        self.workers[name] = procs
        for proc in procs:
            def up(p: Proc = proc) -> bool:
                return "ready." in p.log() or p.popen.poll() is not None

            wait_until(up, 90, f"{proc.log_path.name} ready")
            if proc.popen.poll() is not None:
                raise RuntimeError(f"worker on {name} exited at start:\n{proc.log()[-3000:]}")

    def kill_workers(self, name: str) -> None:
        """SIGKILL every worker process of the host (pool, control worker and their children), as a host lost."""
        for proc in self.workers.pop(name, []):
            for pid in reversed(tree(proc.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.stop(signal.SIGKILL, timeout=10)

    def pids(self, name: str) -> list[int]:
        """A host's processes (hostN), moto's and the forwarders' (s3+forwarders), or the bench's own (bench)."""
        if name == "bench":
            return [os.getpid()]
        if name == "s3+forwarders":
            roots = [p.pid for p in self.fabric.forwarders] + ([self.moto.pid] if self.moto else [])
        else:
            roots = [self.api.pid] if name == "host1" else [p.pid for p in self.workers.get(name, [])]
        return [pid for root in roots for pid in tree(root)]

    # ---- jobs ----------------------------------------------------------------------------------------------
    def upload(self, content: bytes, name: str) -> dict[str, Any]:
        answer = requests.post(f"{self.base}{API}/upload", files={"file": (name, content)}, timeout=60)
        answer.raise_for_status()
        return answer.json()

    def submit(self, app: str, inputs: dict[str, Any], session: requests.Session | None = None) -> str:
        http = session or requests
        answer = http.post(f"{self.base}{API}/job", json={"app": app, "job_inputs": inputs}, timeout=60)
        if answer.status_code not in (200, 202):
            raise RuntimeError(f"POST /job: {answer.status_code} {answer.text[:500]}")
        return answer.json()["job_id"]

    def states(self, ids: list[str]) -> dict[str, str]:
        from sqlalchemy import select

        from caesar_rest.db import session_scope
        from caesar_rest.models import Job

        with session_scope(self.db_url) as s:
            return dict(s.execute(select(Job.id, Job.state).where(Job.id.in_(ids))).all())

    def wait_ended(self, ids: list[str], timeout: float) -> None:
        wait_until(lambda: all(state in TERMINAL for state in self.states(ids).values()), timeout,
                   f"the end of {len(ids)} jobs", interval=0.05)

    def metadata(self, job_id: str) -> dict[str, Any]:
        return requests.get(f"{self.base}{API}/job/{job_id}/metadata", timeout=30).json()

    def output(self, job_id: str) -> dict[str, bytes]:
        """The job's tar.gz from the API host: {path inside: bytes} of its regular files."""
        answer = requests.get(f"{self.base}{API}/job/{job_id}/output", timeout=120)
        if answer.status_code != 200:
            raise AssertionError(f"GET /job/{job_id}/output: {answer.status_code} {answer.text[:300]}")
        with tarfile.open(fileobj=io.BytesIO(answer.content), mode="r:gz") as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]

    # ---- the end -------------------------------------------------------------------------------------------
    def stop(self) -> None:
        from caesar_rest.celery_app import make_celery
        from caesar_rest.config import load_settings

        try:
            self.fabric.close()            # every host's processes, the namespaces, the forwarders, the bridge
        finally:
            if self.moto is not None:
                self.moto.stop()
            if self.db_url:
                try:
                    celery = make_celery(load_settings(self.local_settings, environ={}))
                    celery.control.purge()
                    with celery.connection_for_write() as conn:
                        for queue in ("local", "control"):
                            channel = conn.channel()
                            try:
                                channel.queue_delete(self.settings["QUEUE_PREFIX"] + queue)
                            except conn.channel_errors:
                                pass
                            finally:
                                channel.close()
                    celery.close()
                except Exception as exc:
                    print(f"multihost: queues not removed: {exc}", file=sys.stderr)
                drop_pg_database(self.db_url)
            if not self.keep:
                subprocess.run(["rm", "-rf", str(self.base_dir)], check=False)


# ---- throughput --------------------------------------------------------------------------------------------
@dataclass
class Burst:
    app: str
    hosts: int
    jobs: int
    seconds: float
    cpu_busy: float                 # of the whole machine, in cores (other work on the machine included)
    #: CPU seconds: each host's processes (jobs included), moto + the forwarders, the bench itself, and the rest of
    #: the machine (PostgreSQL, RabbitMQ, Redis, and whatever else runs there)
    cpu: dict[str, float] = field(default_factory=dict)
    ran_on: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    @property
    def service_ms(self) -> float:
        """CPU milliseconds per job of the three hosts' processes (the API, the workers, the jobs)."""
        return sum(self.cpu.get(h, 0.0) for h in ("host1", "host2", "host3")) / self.jobs * 1000


def burst(cluster: Cluster, app: str, inputs: dict[str, Any], n: int, hosts: int) -> Burst:
    """n jobs POSTed back to back on 4 connections, timed from the first POST to the last end."""
    from concurrent.futures import ThreadPoolExecutor

    names = ["host1", "host2", "host3", "s3+forwarders", "bench"]
    cpu0 = {name: cpu_seconds(cluster.pids(name)) for name in names}
    busy0, total0 = _busy()
    started = time.perf_counter()
    sessions = [requests.Session() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda i: cluster.submit(app, inputs, sessions[i % 4]), range(n)))
    cluster.wait_ended(ids, 60 + n * 2)
    seconds = time.perf_counter() - started
    busy1, total1 = _busy()
    cpu = {name: round(cpu_seconds(cluster.pids(name)) - cpu0[name], 2) for name in names}
    cores = os.cpu_count() or 1
    busy = (busy1 - busy0) / (total1 - total0) * cores           # cores busy on average
    cpu["rest"] = round(busy * seconds - sum(cpu.values()), 2)
    from sqlalchemy import select

    from caesar_rest.db import session_scope
    from caesar_rest.models import Job

    with session_scope(cluster.db_url) as s:
        rows = s.execute(select(Job.state, Job.host).where(Job.id.in_(ids))).all()
    bad = [state for state, _h in rows if state != "SUCCESS"]
    if bad:
        raise RuntimeError(f"{len(bad)} of the {app} burst's jobs did not succeed: {Counter(bad)}")
    return Burst(app, hosts, n, seconds, round(busy, 2), cpu,
                 dict(Counter(str(h) for _s, h in rows)))


# ---- the drill ---------------------------------------------------------------------------------------------
@dataclass
class DrillResult:
    jobs: int
    seconds: float
    states: dict[str, int]
    ran_on: dict[str, int]                 # hosts of the final attempts that succeeded
    lost_on: dict[str, int]                # hosts of the attempts declared lost (retried ones included)
    retried: int                           # jobs that succeeded on a later attempt after one was lost
    failed_lost: int                       # jobs of the app without retries that ended FAILURE "Job lost"
    downloaded: int                        # tar.gz checked from the API host
    doubled: int                           # a RUNNING more often than its attempts
    killed_at: int                         # jobs ended when host 3 was killed
    running_on_host3_at_kill: int
    settled_after_kill: float | None = None   # seconds from the kill to the last of host 3's attempts declared lost
    lost_reasons: dict[str, int] = field(default_factory=dict)     # the lost attempts' statuses
    problems: list[str] = field(default_factory=list)


def drill(cluster: Cluster, n: int, seconds: float = 1.0, once_every: int = 4, files: int = 4) -> DrillResult:
    """n digest jobs (every once_every-th of the app without retries) on hosts 2 and 3; host 3's workers SIGKILLed
    once a third have ended while it runs some; then every job's end, reason and output are checked."""
    import random

    blobs = [os.urandom(random.randint(1000, 200_000)) for _ in range(files)]
    uploaded = [cluster.upload(blob, f"input{i}.bin") for i, blob in enumerate(blobs)]
    digests = {u["uuid"]: hashlib.sha256(b).hexdigest() for u, b in zip(uploaded, blobs, strict=True)}
    for u in uploaded:
        if u["sha256"] != digests[u["uuid"]] or not u["path"].startswith("s3://"):
            raise AssertionError(f"upload not in S3 with its digest: {u}")
    started = time.monotonic()
    jobs: dict[str, dict[str, Any]] = {}
    http = requests.Session()
    for i in range(n):
        app = "digest-once" if once_every and i % once_every == once_every - 1 else "digest"
        f = uploaded[i % files]["uuid"]
        tag = f"job-{i}-{os.urandom(3).hex()}"
        jobs[cluster.submit(app, {"inputfile": f, "seconds": seconds, "tag": tag}, http)] = \
            {"app": app, "file": f, "tag": tag}
    ids = list(jobs)
    from sqlalchemy import func, select

    from caesar_rest.db import session_scope
    from caesar_rest.models import Job

    def host3_running() -> int:
        with session_scope(cluster.db_url) as s:
            return int(s.scalar(select(func.count()).select_from(Job).where(
                Job.id.in_(ids), Job.host == "host3", Job.state.in_(("STARTED", "RUNNING")))) or 0)

    seen: list[Any] = []

    def third_ended_host3_busy() -> bool:
        states = cluster.states(ids)
        seen[:] = [Counter(states.values())]
        return sum(s in TERMINAL for s in states.values()) >= n // 3 and host3_running() >= cluster.concurrency

    try:
        wait_until(third_ended_host3_busy, 60 + n * seconds, "a third of the jobs ended while host 3 runs some",
                   interval=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; jobs {seen}") from None
    running3 = host3_running()
    killed_at = sum(s in TERMINAL for s in cluster.states(ids).values())
    killed = datetime.now(UTC).replace(tzinfo=None)      # the database's clock: naive UTC
    cluster.kill_workers("host3")
    cluster.wait_ended(ids, 120 + n * seconds * 2)
    elapsed = time.monotonic() - started
    result = DrillResult(n, round(elapsed, 1), {}, {}, {}, 0, 0, 0, 0, killed_at, running3)
    states: Counter[str] = Counter()
    ran: Counter[str] = Counter()
    lost_on: Counter[str] = Counter()
    settled: list[float] = []
    reasons: Counter[str] = Counter()
    for job_id, job in jobs.items():
        meta = cluster.metadata(job_id)
        states[meta["state"]] += 1
        previous = meta["retries"]["previous_attempts"] or []
        for attempt in previous:
            lost_on[str(attempt.get("host"))] += 1
            reasons[str(attempt.get("status"))] += 1
            settled.append((datetime.fromisoformat(attempt["ended"]) - killed).total_seconds())
        running = sum(e["state"] == "RUNNING" for e in meta["events"])
        if running > 1 + len(previous):
            result.doubled += 1
            result.problems.append(f"{job_id}: RUNNING {running} times for {1 + len(previous)} attempts")
        if meta["state"] == "SUCCESS":
            ran[meta["host"]] += 1
            result.retried += bool(previous)
            files_in = cluster.output(job_id)
            digest = files_in.get(f"job_{job_id}/digest.txt", b"").split()[:1]
            tagged = files_in.get(f"job_{job_id}/tag.txt", b"").strip()
            if digest != [digests[job["file"]].encode()] or tagged != job["tag"].encode():
                result.problems.append(f"{job_id}: tar.gz holds digest {digest} tag {tagged!r}, "
                                       f"expected {digests[job['file']]} {job['tag']}")
            if files_in.get(f"job_{job_id}/stdout.log", b"").strip() != job["tag"].encode():
                result.problems.append(f"{job_id}: its tar.gz's stdout.log is not its tag: {sorted(files_in)}")
            result.downloaded += 1
        elif job["app"] == "digest-once" and meta["state"] == "FAILURE" and "Job lost" in meta["status"] \
                and "host3" in meta["status"]:
            result.failed_lost += 1
            lost_on["host3"] += 1
            reasons[meta["status"]] += 1
            settled.append((datetime.fromisoformat(meta["timings"]["finished"]) - killed).total_seconds())
        else:
            result.problems.append(f"{job_id} ({job['app']}): {meta['state']} {meta['status']!r}")
    result.states, result.ran_on, result.lost_on = dict(states), dict(ran), dict(lost_on)
    result.settled_after_kill = round(max(settled), 2) if settled else None
    result.lost_reasons = dict(reasons)
    return result


# ---- main --------------------------------------------------------------------------------------------------
def measure(jobs: int, bursts: int, sleep: float, concurrency: int, scratch: Path | None) -> tuple[list[Figure],
                                                                                                     dict[str, Any]]:
    at_start = machine()
    cluster = Cluster(scratch, concurrency=concurrency)
    try:
        cluster.start_workers("host2", beat=True)
        cluster.submit("noop", {})          # warm: the API's processes, the pool's connections
        one = [burst(cluster, "noop", {}, bursts, 1), burst(cluster, "nap", {"seconds": sleep}, bursts // 2, 1)]
        cluster.start_workers("host3", beat=False)
        two = [burst(cluster, "noop", {}, bursts, 2), burst(cluster, "nap", {"seconds": sleep}, bursts // 2, 2)]
        result = drill(cluster, jobs)
    finally:
        cluster.stop()
    cores = os.cpu_count() or 1
    figures = []
    for a, b in zip(one, two, strict=True):
        what = "no-op jobs" if a.app == "noop" else f"{sleep:g} s jobs"
        ceiling = "" if a.app == "noop" else \
            f"; the slots' ceiling {concurrency / sleep:g} / {2 * concurrency / sleep:g} jobs/s"
        figures.append(Figure(
            f"multihost_{a.app}_rate", f"{what}, 2 worker hosts", round(b.rate, 2), "jobs/s", round(a.rate, 2),
            "1 worker host", notes=f"{a.jobs} / {b.jobs} jobs (1 / 2 worker hosts){ceiling}; machine busy "
                                   f"{a.cpu_busy:g} / {b.cpu_busy:g} of {cores} cores; the service's CPU per job "
                                   f"{a.service_ms:.0f} / {b.service_ms:.0f} ms; CPU s {a.cpu} / {b.cpu}; ran on "
                                   f"{a.ran_on} / {b.ran_on}",
            details={"one": {**a.__dict__, "rate": a.rate}, "two": {**b.__dict__, "rate": b.rate}}))
    ok = not result.problems and set(result.ran_on) >= {"host2", "host3"} and result.lost_on.get("host3", 0) > 0
    figures.append(Figure("multihost_drill_seconds", f"drill: {jobs} jobs, host 3 killed", result.seconds, "s",
                          target="every job ends with a reason, both hosts ran some, every output from host 1",
                          met=ok, notes=json.dumps({k: v for k, v in result.__dict__.items() if k != "problems"}),
                          details=result.__dict__))
    return figures, {"concurrency_per_host": concurrency, "problems": result.problems[:20], **at_start}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.multihost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=200, help="jobs of the drill (default 200)")
    p.add_argument("--burst", type=int, default=200, help="no-op jobs of each throughput burst (default 200; the "
                                                          "sleeping bursts are half as many)")
    p.add_argument("--sleep", type=float, default=0.5, help="seconds of the slot-bound bursts' jobs (default 0.5)")
    p.add_argument("--concurrency", type=int, default=2, help="pool processes per worker host (default 2)")
    p.add_argument("--scratch", type=Path, help="where the run's directory goes (default: the system's temp)")
    p.add_argument("--out", type=Path, help="JSON file (default bench/results/<timestamp>-multihost.json)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m bench.multihost: needs root (network and mount namespaces)", file=sys.stderr)
        return 2
    started = time.time()
    figures, meta = measure(args.jobs, args.burst, args.sleep, args.concurrency, args.scratch)
    out = args.out or Path(__file__).resolve().parent / "results" / f"{time.strftime('%Y%m%dT%H%M%S')}-multihost.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    path = write_json(figures, {"mode": "multihost", "total_seconds": round(time.time() - started, 1), **meta}, out)
    print(table(figures))
    for f in figures:
        print(f"\n{f.title}: {f.notes}")
    if meta["problems"]:
        print("\nproblems:\n  " + "\n  ".join(meta["problems"]))
    print(f"\nresults in {path}")
    return 0 if all(f.met is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
