"""Job rows written straight into the database (SQLAlchemy core, thousands a statement), not through the API."""
from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import insert

from caesar_rest import storage
from caesar_rest.db import engine_for
from caesar_rest.models import PENDING, TERMINAL_STATES, Job, JobEvent, utcnow

NOOP_SPEC = {"image": None, "image_pull": "if-missing", "cpus": 1.0, "memory_mb": None, "time_limit": 60,
             "outputs": [], "env": {}, "backend_options": {}}
CHUNK = 5000


def job_row(settings: dict[str, Any], job_id: str, state: str = PENDING, owner: str = "anonymous", app: str = "noop",
            tag: str | None = None, submitted=None, workdir: str | None = None) -> dict[str, Any]:
    submitted = submitted or utcnow()
    done = state in TERMINAL_STATES
    return {"id": job_id, "owner": owner, "kind": "app", "app": app, "app_version": "1.0", "backend": "local",
            "tag": tag, "job_inputs": {}, "argv": ["true"], "spec": NOOP_SPEC, "state": state,
            "status": "Job submitted with success" if state == PENDING else f"bench row in state {state}",
            "exit_status": 0 if done else None, "pid": None, "host": None, "handle": None,
            "workdir": workdir or str(storage.user_dir(settings["JOBS_DIR"], owner) / job_id),
            "cancel_requested": False, "attempts": 0 if state == PENDING else 1, "submit_date": submitted,
            "start_date": None if state == PENDING else submitted, "run_date": submitted if done else None,
            "end_date": submitted + timedelta(seconds=1) if done else None, "heartbeat_at": None,
            "unreachable_since": None, "elapsed": 1.0 if done else None, "extra": {}}


def insert_pending(settings: dict[str, Any], n: int, tag: str | None = None) -> list[str]:
    """n PENDING no-op jobs, each with its 'submitted' event, as POST /job would leave them."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    now = utcnow()
    engine = engine_for(settings["DATABASE_URL"])
    with engine.begin() as conn:
        for start in range(0, n, CHUNK):
            part = ids[start:start + CHUNK]
            conn.execute(insert(Job.__table__), [job_row(settings, i, tag=tag, submitted=now) for i in part])
            conn.execute(insert(JobEvent.__table__), [{"job_id": i, "state": PENDING, "message": "Job submitted",
                                                        "at": now} for i in part])
    return ids


def fill_history(settings: dict[str, Any], n: int, owners: tuple[str, ...] = ("anonymous",)) -> int:
    """n finished jobs spread over the last 100 days, several apps, tags and owners."""
    engine = engine_for(settings["DATABASE_URL"])
    now = utcnow()
    apps = ("noop", "sfinder", "checksum", "sleeper")
    states = TERMINAL_STATES       # active rows would look like lost jobs to a worker's reaper
    written = 0
    with engine.begin() as conn:
        for start in range(0, n, CHUNK):
            rows = []
            for k in range(start, min(n, start + CHUNK)):
                state = "SUCCESS" if k % 10 else states[(k // 10) % len(states)]
                rows.append(job_row(settings, str(uuid.uuid4()), state=state, owner=owners[k % len(owners)],
                                    app=apps[k % len(apps)], tag=f"survey-{k % 37}",
                                    submitted=now - timedelta(seconds=86400 * 100 * k / max(n, 1))))
            conn.execute(insert(Job.__table__), rows)
            written += len(rows)
    return written
