"""`python -m bench [--quick]`: every figure on one fresh production stack, a table, and a JSON file.

Phases, in order: OGC API - Processes against pygeoapi (first: its stores must hold only the sizes it asks for), job
overhead, submission throughput, drain, upload, tar.gz download, reads with a full
jobs table (100,000 rows), then at a million (scale: /jobs, status, TES, OGC, /metrics, the reaper; the last two add
the most rows, so they run last). A phase that fails is reported (value missing,
error in the JSON) and the exit status is 1; targets missed do not change the exit status."""
from __future__ import annotations

import argparse
import socket
import sys
import time
import traceback
import uuid
from pathlib import Path

from .report import Figure, machine, table, write_json

PHASES = ("ogc", "overhead", "throughput", "drain", "upload", "download", "listing", "scale")
#: What each phase must produce: the smoke test checks every key is present with a number.
FIGURE_KEYS = {
    "ogc": ("ogc_async_p50", "ogc_async_p50_small", "ogc_async_growth", "ogc_jobs_p50", "ogc_jobs_p50_small",
            "ogc_jobs_growth"),
    "overhead": ("job_overhead_p50", "job_overhead_p95", "job_overhead_sandbox_p50"),
    "throughput": ("submit_throughput",),
    "drain": ("drain_rate", "drain_lost", "drain_run_twice"),
    "upload": ("upload_throughput", "upload_rss_growth", "upload_throughput_uwsgi", "upload_ceiling_gunicorn",
               "upload_ceiling_uwsgi", "upload_throughput_nginx", "upload_sha256_floor", "upload_transport_ceiling",
               "upload_tus_throughput", "upload_tus_last_chunk"),
    "download": ("download_tgz_time",),
    "listing": ("jobs_page_p95", "job_status_p95"),
    "scale": ("scale_jobs_first_p95", "scale_jobs_token_p95", "scale_status_p95", "scale_tes_first_p95",
              "scale_tes_token_p95", "scale_ogc_jobs_p95", "scale_metrics_p95", "scale_reaper_run", "scale_fill_time"),
}
MiB = 1024 * 1024

FULL = {"ogc_jobs": 1000, "ogc_rounds": 40, "overhead_jobs": 100, "submit_requests": 3000, "submit_concurrency": 16,
        "drain_jobs": 10000, "upload_mib": 1024, "upload_repeats": 3, "download_mib": 1024, "download_repeats": 1,
        "listing_jobs": 100000, "listing_requests": 300, "scale_jobs": 1000000, "scale_requests": 300}
QUICK = {"ogc_jobs": 40, "ogc_rounds": 6, "overhead_jobs": 10, "submit_requests": 200, "submit_concurrency": 8,
         "drain_jobs": 100, "upload_mib": 16, "upload_repeats": 1, "download_mib": 16, "download_repeats": 1,
         "listing_jobs": 2000, "listing_requests": 40, "scale_jobs": 5000, "scale_requests": 40}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, a few seconds a phase")
    p.add_argument("--only", default=",".join(PHASES), help=f"comma list of phases ({', '.join(PHASES)})")
    p.add_argument("--out", type=Path, help="JSON file (default bench/results/<timestamp>.json)")
    p.add_argument("--scratch", type=Path, help="where the scratch directory goes (default: the system temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (logs) afterwards")
    p.add_argument("--job-poll-interval", type=float,
                   help="JOB_POLL_INTERVAL for the workers (default: the setting's default)")
    p.add_argument("--worker-concurrency", type=int, default=2, help="local pool size for the overhead phase")
    p.add_argument("--drain-concurrency", type=int, default=4, help="local pool size for the drain")
    p.add_argument("--drain-timeout", type=float, default=1200.0)
    p.add_argument("--api-processes", type=int, default=3, help="gunicorn worker processes (cores + 1 for gthread)")
    p.add_argument("--api-threads", type=int, default=4, help="gunicorn threads per process")
    for key, value in FULL.items():
        p.add_argument("--" + key.replace("_", "-"), type=int, help=f"default {value}, quick {QUICK[key]}")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.phases = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = sorted(set(args.phases) - set(PHASES))
    if unknown:
        p.error(f"unknown phase {unknown[0]!r}; phases: {', '.join(PHASES)}")
    return args


def run(args: argparse.Namespace) -> tuple[list[Figure], dict]:
    from . import drain, listing, ogc, scale, throughput, transfer
    from .stack import Stack

    started = time.time()
    meta: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "mode": "quick" if args.quick else "full",
                  "machine": machine(), "args": {k: v for k, v in vars(args).items() if k not in ("out", "scratch")},
                  "phase_seconds": {}, "errors": {}}
    figures: list[Figure] = []
    stack = Stack(args.quick, scratch=args.scratch, keep=args.keep, job_poll_interval=args.job_poll_interval,
                  processes=args.api_processes, threads=args.api_threads)
    print(f"bench: scratch {stack.root}, database {stack.db_url.rsplit('/', 1)[1]}, queue prefix {stack.prefix}",
          flush=True)
    try:
        stack.migrate()
        base = stack.start_api()
        meta["stack"] = {"broker": "RabbitMQ", "result_store": "Redis", "database": "PostgreSQL",
                         "api": f"gunicorn {args.api_processes}x{args.api_threads} gthread",
                         "job_poll_interval": stack.settings["JOB_POLL_INTERVAL"]}
        steps = {
            "ogc": lambda: ogc.measure(stack, base, args.ogc_jobs, args.ogc_rounds, args.worker_concurrency,
                                       args.api_processes, args.api_threads),
            "overhead": lambda: _overhead(stack, base, args),
            "throughput": lambda: throughput.measure(stack, base, args.submit_requests, args.submit_concurrency),
            "drain": lambda: drain.measure(stack, args.drain_jobs, args.drain_concurrency, args.drain_timeout),
            "upload": lambda: transfer.measure_upload(stack, base, args.upload_mib * MiB, args.upload_repeats),
            "download": lambda: transfer.measure_download(stack, base, args.download_mib * MiB, args.download_repeats),
            "listing": lambda: listing.measure(stack, base, args.listing_jobs, args.listing_requests),
            "scale": lambda: scale.measure(stack, base, args.scale_jobs, args.scale_requests),
        }
        for phase in PHASES:
            if phase not in args.phases:
                continue
            print(f"bench: {phase} ...", flush=True)
            t0 = time.perf_counter()
            try:
                got = steps[phase]()
            except Exception as exc:
                traceback.print_exc()
                meta["errors"][phase] = f"{exc.__class__.__name__}: {exc}"
                got = [Figure(key, f"{key} (phase failed)", None, "", notes=meta["errors"][phase])
                       for key in FIGURE_KEYS[phase]]
            meta["phase_seconds"][phase] = round(time.perf_counter() - t0, 2)
            for fig in got:
                print(f"bench:   {fig.title}: {fig.value if fig.value is None else round(fig.value, 3)} {fig.unit}"
                      + (f" (baseline {fig.baseline:.3f})" if fig.baseline is not None else ""), flush=True)
            figures.extend(got)
    finally:
        stack.stop()
    meta["total_seconds"] = round(time.time() - started, 2)
    return figures, meta


def _overhead(stack, base: str, args: argparse.Namespace) -> list[Figure]:
    from . import overhead

    name, plain_name = f"overhead{uuid.uuid4().hex[:6]}", f"nosandbox{uuid.uuid4().hex[:6]}"
    worker = stack.spawn_worker(args.worker_concurrency, name=name)
    bare = stack.spawn_bare_worker()
    plain = None
    try:
        stack.wait_ready(worker, bare)
        figures = overhead.measure(stack, base, args.overhead_jobs, worker)
        stack.stop_worker(bare)
        # What the sandbox adds to a job: the same jobs on a pool without it (SANDBOX none), beside the sandboxed one.
        plain = stack.spawn_worker(args.worker_concurrency, name=plain_name, extra={"SANDBOX": "none"})
        stack.wait_ready(plain)
        host = socket.gethostname()
        return [*figures, overhead.sandbox_cost(stack, base, args.overhead_jobs, f"{name}@{host}",
                                                f"{plain_name}@{host}")]
    finally:
        stack.stop_worker(*(proc for proc in (bare, worker, plain) if proc is not None and proc in stack.workers))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    figures, meta = run(args)
    path = write_json(figures, meta, args.out)
    print()
    print(table(figures))
    print(f"\n{meta['mode']} run: {meta['total_seconds']} s; phases {meta['phase_seconds']}; results in {path}")
    if meta["errors"]:
        print(f"phases that failed: {meta['errors']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
