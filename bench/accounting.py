"""`python -m bench.accounting [--jobs N] [--pg URL]`: GET /accounting and /appstats with N finished jobs (10 users,
4 apps) and N/10 files in the database: p50/p95 of 30 requests each, as the admin (every user) and as one user."""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import insert

from caesar_rest import create_app
from caesar_rest.auth import hash_token
from caesar_rest.db import dispose_all, engine_for
from caesar_rest.models import File, utcnow

from .rows import CHUNK, fill_history

OWNERS = tuple(f"user{i}" for i in range(10))
API = "/caesar/api/v1.0"


def _files(settings, n: int) -> None:
    now = utcnow()
    with engine_for(settings["DATABASE_URL"]).begin() as conn:
        for start in range(0, n, CHUNK):
            conn.execute(insert(File), [
                {"uuid": uuid.uuid4().hex, "owner": OWNERS[k % len(OWNERS)], "filename_orig": f"f{k}.fits",
                 "format": "fits", "path": f"/nowhere/{k}.fits", "size_bytes": 1000 + k, "sha256": "0" * 64,
                 "crc64nvme": None, "tag": None, "created_at": now} for k in range(start, min(n, start + CHUNK))])


def _time(client, path: str, headers: dict[str, str], n: int = 30) -> dict[str, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(API + path, headers=headers)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.get_json()
    times.sort()
    return {"p50_ms": round(statistics.median(times), 1), "p95_ms": round(times[int(0.95 * (n - 1))], 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--pg", help="a PostgreSQL SQLAlchemy URL (an empty database) instead of SQLite")
    args = parser.parse_args()
    users: dict[str, dict[str, object]] = {o: {"tokens_sha256": [hash_token(f"token-{o}")]} for o in OWNERS}
    users["root"] = {"tokens_sha256": [hash_token("token-root")], "admin": True}
    with tempfile.TemporaryDirectory() as root:
        config = {"ROOT": str(Path(root) / "var"), "AUTH_MODE": "token", "AUTH_USERS": users,
                  **({"DATABASE_URL": args.pg} if args.pg else {})}
        app = create_app(config)
        settings = dict(app.config)
        fill_history(settings, args.jobs, OWNERS)
        _files(settings, args.jobs // 10)
        client = app.test_client()
        out: dict[str, object] = {"jobs": args.jobs, "files": args.jobs // 10,
                                  "database": "postgresql" if args.pg else "sqlite"}
        for when in ("fresh", "analyzed"):
            if when == "analyzed":      # what a database in service has: statistics (and PostgreSQL's visibility map)
                with engine_for(settings["DATABASE_URL"]).connect() as conn:
                    conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                        "VACUUM ANALYZE" if args.pg else "ANALYZE")
            for who in ("root", "user3"):
                headers = {"Authorization": f"Bearer token-{who}"}
                for path in ("/accounting", "/appstats"):
                    out[f"{when}_{path[1:]}_{'admin' if who == 'root' else 'user'}"] = _time(client, path, headers)
        dispose_all()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
