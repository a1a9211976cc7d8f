"""OGC API - Processes against pygeoapi (bench/pygeoapi.py: its TinyDB manager, its `hello-world` process, under
gunicorn with the API's processes x threads), both up at once in the same run.

Both stores are filled the same way: async executions of the server's no-op process through its HTTP API, one after
the other, until the store holds the size asked (counted in the stores themselves: the jobs table, the TinyDB file),
and every job has ended (then our jobs table is vacuumed and analyzed, as autovacuum would within a minute). At
each size (a tenth of the largest, then the largest) two figures, taken in rounds that
alternate which server goes first (A B, B A, ...), so that both see the same load on the shared cores:
- async round trip: POST /processes/<id>/execution with `Prefer: respond-async` (ours: the no-op app on the local
  backend, sandboxed, through the Celery pool; theirs: hello-world in a thread of the gunicorn process), then
  GET of the Location every POLL_PAUSE until `successful`;
- GET /jobs (the first page, 10 jobs on both).
The flatness figures are the largest size's p50 over the smallest's, ours beside pygeoapi's."""
from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from statistics import median
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import text

from caesar_rest.db import engine_for

from .httpload import Connection
from .pygeoapi import PROCESS, VERSION, Pygeoapi
from .report import Figure, summary_ms
from .stack import cpu_seconds, tree

ASYNC = {"Prefer": "respond-async", "Accept": "application/json"}
POLL_PAUSE = 0.002        # between two status reads of a job (the same for both servers)
FLAT = 1.25               # "flat": the largest store's p50 at most this many times the smallest's
ROUND_TIMEOUT = 60.0
WARMUP = 10               # round trips of each server before the measured ones, at each size


class Server:
    """One OGC server as the bench drives it: its execute and jobs paths and how its store is counted."""

    def __init__(self, name: str, base: str, execute: str, body: dict, jobs: str) -> None:
        self.name, self.execute, self.body, self.jobs_path = name, execute, body, jobs
        self.conn = Connection(base)
        self.pids: list[int] = []

    def submit(self) -> str:
        status, raw = self.conn.request("POST", self.execute, self.body, headers=ASYNC)
        if status != 201 or "location" not in self.conn.headers:
            raise RuntimeError(f"{self.name}: async execute answered {status}: {raw[:300]!r}")
        return urlsplit(self.conn.headers["location"]).path

    def status(self, path: str) -> dict[str, Any]:
        status, raw = self.conn.request("GET", path + "?f=json", headers={"Accept": "application/json"})
        if status != 200:
            raise RuntimeError(f"{self.name}: GET {path} answered {status}: {raw[:300]!r}")
        return json.loads(raw)

    def round_trip(self) -> dict[str, float]:
        t0 = time.perf_counter()
        path = self.submit()
        posted = time.perf_counter() - t0
        polls = 0
        while True:
            info = self.status(path)
            polls += 1
            if info["status"] == "successful":
                break
            if info["status"] not in ("accepted", "running"):
                raise RuntimeError(f"{self.name}: job {path} ended {info['status']}: {info.get('message')}")
            if time.perf_counter() - t0 > ROUND_TIMEOUT:
                raise RuntimeError(f"{self.name}: job {path} still {info['status']} after {ROUND_TIMEOUT:g} s")
            time.sleep(POLL_PAUSE)
        total = time.perf_counter() - t0
        served = (_when(info["finished"]) - _when(info["created"])).total_seconds()
        return {"total": total, "post": posted, "polls": polls, "created_to_finished": served,
                "id": path.rsplit("/", 1)[1]}

    def list_jobs(self) -> float:
        t0 = time.perf_counter()
        status, raw = self.conn.request("GET", self.jobs_path, headers={"Accept": "application/json"})
        elapsed = time.perf_counter() - t0
        if status != 200 or len(json.loads(raw)["jobs"]) != 10:
            raise RuntimeError(f"{self.name}: GET {self.jobs_path} answered {status}: {raw[:300]!r}")
        return elapsed


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _fill(server: Server, count, size: int, timeout: float = 900.0) -> dict[str, Any]:
    """Async executions until the store holds size jobs, then wait until none is active. count() -> (jobs, active)."""
    t0 = time.perf_counter()
    have, _ = count()
    added = max(0, size - have)
    for _ in range(added):
        server.submit()
    while True:
        have, active = count()
        if not active:
            break
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"{server.name}: {active} of {have} jobs still active after {timeout:g} s of filling")
        time.sleep(0.1)
    return {"jobs": have, "added": added, "seconds": round(time.perf_counter() - t0, 2)}


def _interleaved(servers: tuple[Server, Server], rounds: int, step) -> dict[str, list]:
    got: dict[str, list] = {s.name: [] for s in servers}
    for i in range(rounds):
        for server in servers if i % 2 == 0 else servers[::-1]:
            got[server.name].append(step(server))
    return got


def _at_size(servers: tuple[Server, Server], counts: dict, size: int, rounds: int, events,
             settle) -> dict[str, Any]:
    filled = {s.name: _fill(s, counts[s.name], size) for s in servers}
    settle()
    for server in servers:                      # warm: connections, caches, both pool processes
        for _ in range(WARMUP):
            server.round_trip()
    cpu0 = {s.name: cpu_seconds(s.pids) for s in servers}
    trips = _interleaved(servers, rounds, Server.round_trip)
    cpu = {s.name: round((cpu_seconds(s.pids) - cpu0[s.name]) / rounds * 1000, 2) for s in servers}
    lists = _interleaved(servers, rounds * 2, Server.list_jobs)
    out: dict[str, Any] = {"filled": filled, "rounds": rounds}
    for s in servers:
        mine = trips[s.name]
        out[s.name] = {"round_trip_ms": summary_ms([t["total"] for t in mine]),
                       "execute_201_ms": summary_ms([t["post"] for t in mine]),
                       "created_to_finished_ms (server's own stamps)": summary_ms(
                           [t["created_to_finished"] for t in mine]),
                       "status_reads_per_job_median": median(t["polls"] for t in mine),
                       "server_cpu_ms_per_round_trip": cpu[s.name],
                       "jobs_list_ms": summary_ms(lists[s.name]),
                       "jobs_in_store_after": counts[s.name]()[0]}
    out["ours"]["phases_ms_p50 (from job_events)"] = events([t["id"] for t in trips["ours"]])
    return out


def measure(stack, base: str, largest: int, rounds: int, concurrency: int, processes: int,
            threads: int) -> list[Figure]:
    engine = engine_for(stack.settings["DATABASE_URL"])

    def ours_count() -> tuple[int, int]:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT count(*), count(*) FILTER (WHERE state IN ('PENDING', 'STARTED', "
                                    "'RUNNING')) FROM jobs WHERE kind = 'app'")).one()
        return int(row[0]), int(row[1])

    def ours_events(ids: list[str]) -> dict[str, float]:
        """Where our round trips' time went: queued (PENDING -> STARTED: the publish, the broker, the claim),
        staging (STARTED -> RUNNING: the sandbox started), running (RUNNING -> SUCCESS: `true`, the end recorded)."""
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT job_id, state, at FROM job_events WHERE job_id = ANY(:ids)"),
                                {"ids": ids}).all()
        at: dict[str, dict[str, datetime]] = {}
        for job_id, state, when in rows:
            at.setdefault(job_id, {})[state] = when
        steps = {"queued": ("PENDING", "STARTED"), "staging": ("STARTED", "RUNNING"), "running": ("RUNNING", "SUCCESS")}
        return {name: round(median((a[end] - a[start]).total_seconds() for a in at.values()) * 1000, 2)
                for name, (start, end) in steps.items()}

    def settle() -> None:
        """The jobs table after the fill as autovacuum leaves it within a minute (each job's row was written four
        times): VACUUM ANALYZE, as the listing phase does. TinyDB has nothing of the kind to wait for."""
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE jobs"))

    theirs = Pygeoapi(stack.root / "pygeoapi", processes, threads)

    def theirs_count() -> tuple[int, int]:
        jobs = theirs.jobs()
        return len(jobs), sum(1 for j in jobs if j.get("status") in ("accepted", "running"))

    t0 = time.perf_counter()
    theirs.start()
    install_s = time.perf_counter() - t0
    worker = stack.spawn_worker(concurrency, name=f"ogc{uuid.uuid4().hex[:6]}")
    try:
        stack.wait_ready(worker)
        ours = Server("ours", base, "/ogcapi/processes/noop/execution", {"inputs": {}}, "/ogcapi/jobs?f=json")
        ours.pids = tree(stack.api.proc.pid) + tree(worker.pid)
        ref = Server("pygeoapi", theirs.base, f"/processes/{PROCESS}/execution", {"inputs": {"name": "bench"}},
                     "/jobs?f=json")
        ref.pids = tree(theirs.proc.pid)
        servers, counts = (ours, ref), {"ours": ours_count, "pygeoapi": theirs_count}
        sizes = (max(1, largest // 10), largest)
        at = {size: _at_size(servers, counts, size, rounds, ours_events, settle) for size in sizes}
        for s in servers:
            s.conn.close()
    finally:
        stack.stop_worker(worker)
        theirs.stop()
    return _figures(at, sizes, {"pygeoapi": VERSION, "start_s (install included when not cached)":
                                round(install_s, 1), "poll_pause_s": POLL_PAUSE,
                                "how": __doc__.split("\n\n", 1)[1]})


def _figures(at: dict[int, dict], sizes: tuple[int, int], about: dict[str, Any]) -> list[Figure]:
    small, large = sizes
    figures = []
    for key, what, title in (("round_trip_ms", "ogc_async", "async execute → successful p50"),
                             ("jobs_list_ms", "ogc_jobs", "OGC GET /jobs p50")):
        for size, suffix in ((large, ""), (small, "_small")):
            ours, ref = at[size]["ours"][key]["p50"], at[size]["pygeoapi"][key]["p50"]
            figures.append(Figure(f"{what}_p50{suffix}", f"{title} ({size:,} jobs in each store)", ours, "ms", ref,
                                  f"pygeoapi {VERSION} TinyDB", "≤ 1.0x pygeoapi", ours <= ref,
                                  details={"at": {str(n): v for n, v in at.items()}, **about}
                                  if (suffix, what) == ("", "ogc_async") else {}))
        grow = {n: at[large][n][key]["p50"] / at[small][n][key]["p50"] for n in ("ours", "pygeoapi")}
        figures.append(Figure(f"{what}_growth", f"{title}: {large:,} over {small:,} jobs", grow["ours"], "x",
                              grow["pygeoapi"], "pygeoapi's growth", f"≤ {FLAT:g}x (flat)", grow["ours"] <= FLAT,
                              details={"p95_ms": {n: {size: at[size][n][key]["p95"] for size in sizes}
                                                  for n in ("ours", "pygeoapi")}}))
    return figures

