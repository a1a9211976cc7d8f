"""`python -m bench.slurm [--jobs N]`: the end-to-end time of a no-op job on Slurm, against Slurm's own.

The one-node cluster of scripts/slurm.sh (started if it is not running), a fresh PostgreSQL database, RabbitMQ and
Redis with queue names unique to the run, the API over HTTP (`caesar-rest serve`) and one worker pool serving the
slurm backend. Each job is the bench's no-op app (`true`) allowed on slurm: sequential POST /job until the commit
of SUCCESS, seen through PostgreSQL LISTEN/NOTIFY as in the overhead phase. Baseline: the same batch script
submitted straight to slurmrestd by the backend's own client and asked for its state every 50 ms until COMPLETED
(what Slurm alone takes to schedule, start and end it). The difference is what the service adds: the poll interval
(REMOTE_POLL_INTERVAL, the default unless --poll-interval), the claim, the submission and the end's recording.
Kept out of `python -m bench`'s phases: it needs the Slurm cluster, which the quick smoke test does not start."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import psycopg
import yaml

from caesar_rest import API_PREFIX
from tests.support import (
    REPO,
    create_pg_database,
    drop_pg_database,
    production_settings,
    start_api,
    start_worker,
)

from .httpload import Connection
from .overhead import DROP_SQL, NOTIFY_CHANNEL, TRIGGER_SQL, pg_conninfo
from .report import Figure, percentile, summary_ms, table, write_json
from .stack import APPS_DIR

NOOP = {"app": "noop", "job_inputs": {}, "backend": "slurm"}


def cluster() -> dict[str, str]:
    done = subprocess.run(["bash", str(REPO / "scripts" / "slurm.sh"), "start"], capture_output=True, text=True,
                          timeout=900, check=True)
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def backend_options(env: dict[str, str]) -> dict[str, Any]:
    return {"url": env["CAESAR_TEST_SLURM_URL"], "api_version": env["CAESAR_TEST_SLURM_API_VERSION"],
            "jwt_key": env["CAESAR_TEST_SLURM_JWT_KEY"], "user": env["CAESAR_TEST_SLURM_USER"],
            "partition": env["CAESAR_TEST_SLURM_PARTITION"]}


def slurm_alone(options: dict[str, Any], workdir: Path, n: int, warmup: int = 1) -> list[float]:
    """Slurm's own time for the no-op: submit through slurmrestd, then its state every 50 ms until it ended."""
    from workers.backends.slurm import SlurmBackend, job_script

    backend = SlurmBackend({}, options)
    times = []
    for i in range(warmup + n):
        run = workdir / f"alone{i}"
        run.mkdir()
        description = {"name": "caesar-bench-alone", "current_working_directory": str(run),
                       "standard_output": "stdout.log", "standard_error": "stderr.log",
                       "environment": {"PATH": "/usr/bin:/bin"}, "cpus_per_task": 1, "tasks": 1}
        if backend.owner is not None:
            os.chown(run, *backend.owner)
        t0 = time.perf_counter()
        slurm_id = backend.rest.submit(job_script(["true"]), description).job_id
        while True:
            record = backend.rest.job(slurm_id)
            if record is None or record.get("job_state") not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
                break
            if time.perf_counter() - t0 > 120:
                raise RuntimeError(f"Slurm job {slurm_id} still {record.get('job_state')} "
                                   f"({record.get('state_reason')}) after 120 s")
            time.sleep(0.05)
        if record is None or record.get("job_state") != "COMPLETED":
            raise RuntimeError(f"Slurm job {slurm_id} ended {record and record.get('job_state')}")
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def through_the_service(base: str, db_url: str, n: int, worker_log: Path, warmup: int = 1) -> dict[str, Any]:
    conn = Connection(base)
    totals: list[float] = []
    phases: dict[str, list[float]] = {"queued": [], "submitted": [], "running": []}
    with psycopg.connect(pg_conninfo(db_url), autocommit=True) as pg:
        pg.execute(TRIGGER_SQL)
        pg.execute(f"LISTEN {NOTIFY_CHANNEL}")
        try:
            for i in range(warmup + n):
                t0 = time.perf_counter()
                status, body = conn.request("POST", f"{API_PREFIX}/job", NOOP)
                if status != 202:
                    raise RuntimeError(f"POST /job answered {status}: {body[:300]!r}")
                job_id = json.loads(body)["job_id"]
                while True:
                    got = list(pg.notifies(timeout=120, stop_after=1))
                    if not got:
                        state, message = pg.execute("SELECT state, status FROM jobs WHERE id = %s",
                                                    (job_id,)).fetchone()
                        raise RuntimeError(f"job {job_id} did not end in 120 s: {state}, {message!r}; the worker's "
                                           f"log ends:\n{worker_log.read_text(errors='replace')[-3000:]}")
                    if got[0].payload == job_id:
                        break
                elapsed = time.perf_counter() - t0
                state, message = pg.execute("SELECT state, status FROM jobs WHERE id = %s", (job_id,)).fetchone()
                if state != "SUCCESS":
                    raise RuntimeError(f"job {job_id} ended {state}: {message}")
                if i < warmup:
                    continue
                totals.append(elapsed)
                at = dict(pg.execute("SELECT state, at FROM job_events WHERE job_id = %s", (job_id,)).fetchall())
                phases["queued"].append((at["STARTED"] - at["PENDING"]).total_seconds())
                phases["submitted"].append((at["RUNNING"] - at["STARTED"]).total_seconds())
                phases["running"].append((at["SUCCESS"] - at["RUNNING"]).total_seconds())
        finally:
            pg.execute(f"UNLISTEN {NOTIFY_CHANNEL}")
            pg.execute(DROP_SQL)
    conn.close()
    return {"total": totals, "phases": phases}


def measure(n: int, poll_interval: float | None, scratch: Path | None) -> tuple[list[Figure], dict[str, Any]]:
    env = cluster()
    root = Path(tempfile.mkdtemp(prefix="caesar-bench-slurm-", dir=scratch or env["CAESAR_TEST_SLURM_SHARED"]))
    root.chmod(0o755)           # the job user reaches the job directories below
    apps = root / "apps"
    apps.mkdir()
    noop = yaml.safe_load((APPS_DIR / "noop.yml").read_text())
    (apps / "noop.yml").write_text(yaml.safe_dump({**noop, "backends": ["slurm"], "default_backend": "slurm"}))
    options = backend_options(env)
    db_url = create_pg_database()
    extra: dict[str, Any] = {"APPS_DIR": str(apps), "BACKENDS": {"slurm": options}, "ALLOW_ANONYMOUS": True}
    if poll_interval is not None:
        extra["REMOTE_POLL_INTERVAL"] = poll_interval
    settings = production_settings(root / "var", db_url, **extra)
    if poll_interval is None:
        del settings["REMOTE_POLL_INTERVAL"]     # the tests' 0.5 s: the bench keeps the default
    from caesar_rest import db
    from caesar_rest.config import load_settings

    db.upgrade(db_url)
    interval = load_settings(settings, environ={})["REMOTE_POLL_INTERVAL"]
    api = worker = None
    try:
        api, base = start_api(settings, root / "api.log")
        worker = start_worker(settings, ["slurm"], root / "worker.log", concurrency=2)
        alone = slurm_alone(options, root, n)
        served = through_the_service(base, db_url, n, root / "worker.log")
    finally:
        for proc in (worker, api):
            if proc is not None:
                proc.stop()
        drop_pg_database(db_url)
        shutil.rmtree(root, ignore_errors=True)
    p50, base50 = percentile(served["total"], 50), percentile(alone, 50)
    details = {"how": "sequential POST /job of the no-op app on slurm until the commit of SUCCESS (LISTEN/NOTIFY); "
                      "baseline: the same script straight to slurmrestd, its state every 50 ms until COMPLETED",
               "job_ms": summary_ms(served["total"]), "slurm_alone_ms": summary_ms(alone),
               "phases_ms_p50 (from job_events)": {k: round(median(v) * 1000, 1) for k, v in served["phases"].items()},
               "remote_poll_interval": interval}
    figures = [
        Figure("slurm_noop_p50", "no-op job on Slurm p50 (POST → SUCCESS)", p50 * 1000, "ms", base50 * 1000,
               "Slurm alone: submit → COMPLETED", "(reported)", None,
               notes=f"the service adds {(p50 - base50) * 1000:.0f} ms, REMOTE_POLL_INTERVAL {interval:g} s",
               details=details),
        Figure("slurm_noop_p95", "no-op job on Slurm p95", percentile(served["total"], 95) * 1000, "ms",
               percentile(alone, 95) * 1000, "Slurm alone, p95", "(reported)", None),
    ]
    return figures, {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.slurm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20, help="jobs of each kind (default 20)")
    p.add_argument("--poll-interval", type=float, help="REMOTE_POLL_INTERVAL (default: the setting's default)")
    p.add_argument("--scratch", type=Path, help="where the run's directory goes (default: the cluster's shared dir)")
    p.add_argument("--out", type=Path, help="JSON file (default bench/results/<timestamp>-slurm.json)")
    args = p.parse_args(argv)
    started = time.time()
    figures, meta = measure(args.jobs, args.poll_interval, args.scratch)
    out = args.out or Path(__file__).resolve().parent / "results" / f"{time.strftime('%Y%m%dT%H%M%S')}-slurm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    path = write_json(figures, {"mode": "slurm", "jobs": args.jobs, "total_seconds": round(time.time() - started, 1),
                                **meta}, out)
    print(table(figures))
    print(f"\n{figures[0].notes}; results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
