"""`python -m bench.drills` (`make drills`): the fault drills of issue 15 on a production stack (PostgreSQL behind a
TCP proxy the drill can cut, RabbitMQ, Redis, real worker processes), and one table: for each drill, the jobs it
ran, how many were lost (FAILURE "Job lost"), doubled (a command run twice without a retry asked for), and
SUCCESS without their outputs. The same figures go to a JSON file beside the bench results.

Drills:
  kill-running     workers SIGKILLed twice while jobs run, a new worker each time (no retries: lost is the honest
                   answer; doubled and SUCCESS-without-outputs must be 0)
  kill-retrying    the same with an app that retries lost attempts: every job must end SUCCESS
  frozen-pool      the pool SIGSTOPped while retrying jobs run, STALE_AFTER 300 s: the broker's view finds it
                   gone within seconds, every job is retried elsewhere and must end SUCCESS
  db-outage        the database cut for 2 x STALE_AFTER while jobs run: no job may end other than SUCCESS
  pending-backlog  PENDING jobs with no worker for 3 reaper periods: messages published must stay within one
                   republish per job"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests

from tests.support import (
    API,
    RETRYING_SLEEPER,
    create_pg_database,
    drop_pg_database,
    production_settings,
    start_api,
    start_worker,
    wait_until,
    write_apps,
)
from tests.tcpproxy import TcpProxy


@dataclass
class Row:
    drill: str
    jobs: int
    success: int
    lost: int
    doubled: int
    success_without_outputs: int
    seconds: float
    note: str = ""


class Drill:
    """One drill's stack: its own database (behind a proxy), queue prefix, API and workers."""

    def __init__(self, scratch: Path, name: str, **settings: Any) -> None:
        self.root = scratch / name
        self.db = create_pg_database()
        self.proxy = TcpProxy(5432)
        url = self.db.replace("127.0.0.1:5432", f"127.0.0.1:{self.proxy.port}")
        apps = write_apps(self.root / "apps", {"sleeper-retry": RETRYING_SLEEPER})
        self.settings = production_settings(self.root / "var", url, APPS_DIR=str(apps), **settings)
        self.api, self.base = start_api(self.settings, self.root / "api.log")
        self.workers: list[Any] = []

    def worker(self, concurrency: int = 4) -> Any:
        proc = start_worker(self.settings, ["local"], self.root / f"worker{len(self.workers)}.log",
                            concurrency=concurrency, beat=True)
        self.workers.append(proc)
        return proc

    def submit(self, app: str, n: int, seconds: float) -> list[str]:
        return [requests.post(f"{self.base}{API}/job", json={"app": app, "job_inputs": {"seconds": seconds}},
                              timeout=30).json()["job_id"] for _ in range(n)]

    def status(self, job_id: str) -> dict[str, Any]:
        return requests.get(f"{self.base}{API}/job/{job_id}/status", timeout=30).json()

    def wait_all(self, ids: list[str], timeout: float) -> None:
        terminal = {"SUCCESS", "FAILURE", "TIMED-OUT", "CANCELED", "ABORTED"}
        wait_until(lambda: all(self.status(j)["state"] in terminal for j in ids), timeout, "every job's end")

    def row(self, drill: str, ids: list[str], started: float, note: str = "") -> Row:
        success = lost = doubled = hollow = 0
        for job_id in ids:
            meta = requests.get(f"{self.base}{API}/job/{job_id}/metadata", timeout=30).json()
            running = [e for e in meta["events"] if e["state"] == "RUNNING"]
            retried = len(meta["retries"]["previous_attempts"])
            doubled += len(running) > 1 + retried
            if meta["state"] == "SUCCESS":
                success += 1
                names = {o["path"] for o in meta.get("outputs") or []}
                hollow += "sleeper.txt" not in names
            elif "Job lost" in meta["status"]:
                lost += 1
        return Row(drill, len(ids), success, lost, doubled, hollow, round(time.monotonic() - started, 1), note)

    def close(self) -> None:
        from caesar_rest.celery_app import make_celery
        from caesar_rest.config import load_settings

        for proc in self.workers:
            proc.stop()
        self.api.stop()
        try:        # this drill's queues (its own prefix) are left empty on the shared RabbitMQ
            make_celery(load_settings(self.settings, environ={})).control.purge()
        except Exception as exc:
            print(f"drill {self.root.name}: queues not purged: {exc}", file=sys.stderr)
        if self.proxy._listener is None:
            self.proxy.up()
        self.proxy.down()
        drop_pg_database(self.db)


def kill_running(scratch: Path, app: str, name: str, jobs: int) -> Row:
    drill = Drill(scratch, name, STALE_AFTER=10, REAPER_INTERVAL=1, HEARTBEAT_INTERVAL=0.5)
    try:
        started = time.monotonic()
        worker = drill.worker()
        ids = drill.submit(app, jobs, seconds=3)
        for _round in range(2):
            wait_until(lambda: any(drill.status(j)["state"] == "RUNNING" for j in ids), 120, "a running job")
            os.killpg(worker.pid, signal.SIGKILL)
            worker.stop()
            worker = drill.worker()
        drill.wait_all(ids, 600)
        return drill.row(name, ids, started, "2 SIGKILLs of the pool while jobs ran")
    finally:
        drill.close()


def frozen_pool(scratch: Path, jobs: int) -> Row:
    """Alive but silent (a frozen VM, a partitioned host): the pid check cannot tell, the heartbeat rule would take
    STALE_AFTER; the reaper's ping misses the pool twice and its jobs run again on a second pool."""
    drill = Drill(scratch, "frozen-pool", STALE_AFTER=300, REAPER_INTERVAL=1, HEARTBEAT_INTERVAL=0.5,
                  DB_IDLE_IN_TRANSACTION_TIMEOUT=5)      # a pool frozen mid-transaction frees its rows in 5 s
    frozen = None
    try:
        started = time.monotonic()
        frozen = drill.worker()
        ids = drill.submit("sleeper-retry", jobs, seconds=3)
        wait_until(lambda: any(drill.status(j)["state"] == "RUNNING" for j in ids), 120, "a running job")
        os.killpg(frozen.pid, signal.SIGSTOP)
        drill.worker()
        drill.wait_all(ids, 240)
        return drill.row("frozen-pool", ids, started, "pool SIGSTOPped with STALE_AFTER 300 s, found by the "
                                                      "broker's view; retries asked")
    finally:
        if frozen is not None:
            os.killpg(frozen.pid, signal.SIGCONT)
        drill.close()


def db_outage(scratch: Path, jobs: int) -> Row:
    stale = 4.0
    drill = Drill(scratch, "db-outage", STALE_AFTER=stale, REAPER_INTERVAL=1, HEARTBEAT_INTERVAL=0.5)
    try:
        started = time.monotonic()
        drill.worker(concurrency=jobs)
        ids = drill.submit("sleeper", jobs, seconds=2 * stale + 8)
        wait_until(lambda: all(drill.status(j)["state"] == "RUNNING" for j in ids), 120, "every job running")
        drill.proxy.down()
        time.sleep(2 * stale)           # the outage's length is the drill's input
        drill.proxy.up()
        drill.wait_all(ids, 300)
        return drill.row("db-outage", ids, started, f"database cut {2 * stale:g} s = 2 x STALE_AFTER")
    finally:
        drill.close()


def pending_backlog(scratch: Path, jobs: int) -> Row:
    """No worker: the reaper itself, called as beat would call it, three periods in a row."""
    from caesar_rest.config import load_settings
    from caesar_rest.db import session_scope
    from caesar_rest.models import Job, utcnow
    from workers.runner import reap

    drill = Drill(scratch, "pending-backlog", PENDING_REPUBLISH_AFTER=60, REAPER_INTERVAL=1)
    try:
        started = time.monotonic()
        ids = drill.submit("sleeper", jobs, seconds=0)
        settings = load_settings({**drill.settings, "DATABASE_URL": drill.db}, environ={})
        with session_scope(drill.db) as s:     # the backlog is older than PENDING_REPUBLISH_AFTER
            s.query(Job).filter(Job.id.in_(ids)).update({"submit_date": utcnow() - timedelta(seconds=120)})
        published: list[str] = []
        for _period in range(3):
            reap(settings, publish=lambda job_id, _b: published.append(job_id), follow=lambda *a: None)
        once = len(set(published)) == len(published)
        row = Row("pending-backlog", len(ids), 0, 0, len(published) - len(set(published)), 0,
                  round(time.monotonic() - started, 1),
                  f"{len(published)} republished in 3 reaper periods ({'once each' if once else 'REPEATED'}); "
                  f"queue held at most {jobs + len(published)} messages for {jobs} jobs")
        return row
    finally:
        drill.close()


def render(rows: list[Row]) -> str:
    head = ("drill", "jobs", "SUCCESS", "lost", "doubled", "SUCCESS w/o outputs", "s", "note")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r.drill} | {r.jobs} | {r.success} | {r.lost} | {r.doubled} | {r.success_without_outputs} "
                     f"| {r.seconds:g} | {r.note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.drills", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer jobs per drill")
    p.add_argument("--out", type=Path, help="JSON file (default bench/results/drills-<timestamp>.json)")
    args = p.parse_args(argv)
    jobs = 8 if args.quick else 24
    scratch = Path(tempfile.mkdtemp(prefix="caesar-drills-"))
    rows: list[Row] = []
    failed = False
    plan = [("kill-running", lambda: kill_running(scratch, "sleeper", "kill-running", jobs)),
            ("kill-retrying", lambda: kill_running(scratch, "sleeper-retry", "kill-retrying", jobs)),
            ("frozen-pool", lambda: frozen_pool(scratch, jobs)),
            ("db-outage", lambda: db_outage(scratch, min(jobs, 4))),
            ("pending-backlog", lambda: pending_backlog(scratch, 100 if args.quick else 1000))]
    for name, run in plan:
        print(f"drill {name}...", file=sys.stderr, flush=True)
        try:
            rows.append(run())
        except Exception as exc:            # reported in the table; the exit status says a drill broke
            failed = True
            rows.append(Row(name, 0, 0, 0, 0, 0, 0.0, f"drill failed: {exc.__class__.__name__}: {exc}"))
    print(render(rows))
    out = args.out or Path(__file__).with_name("results") / f"drills-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    print(f"written: {out}", file=sys.stderr)
    shutil.rmtree(scratch, ignore_errors=True)
    bad = any(r.doubled or r.success_without_outputs for r in rows) or \
        any(r.drill in ("kill-retrying", "frozen-pool", "db-outage") and r.success != r.jobs for r in rows)
    return 1 if failed or bad else 0


if __name__ == "__main__":
    sys.exit(main())
