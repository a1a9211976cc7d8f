"""Helpers of the OGC API - Processes tests: uploads, waiting for a job's OGC status, the job count."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

from ..support import API

FINAL = ("successful", "failed", "dismissed")


def upload(session: requests.Session, base: str, path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        r = session.post(f"{base}{API}/upload", files={"file": (path.name, fh)}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def wait_status(session: requests.Session, ogc: str, job_id: str, statuses=FINAL, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        r = session.get(f"{ogc}/jobs/{job_id}", timeout=10)
        assert r.status_code == 200, r.text
        last = r.json()
        if last["status"] in statuses:
            return last
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not {statuses} in {timeout} s: {last}")


def counts(session: requests.Session, base: str) -> tuple[int, int]:
    """(the caller's jobs, the caller's files), through caesar-rest's own API."""
    jobs = session.get(f"{base}{API}/jobs", params={"per_page": 1}, timeout=10).json()["total"]
    files = len(session.get(f"{base}{API}/fileids", timeout=10).json())
    return jobs, files


def refused_subscriber(body: Any, rules: Any) -> bool:
    """Whether a subscriber URL of an execute request names a literal address the egress rules refuse (a 400
    that depends on EGRESS_ALLOWED_NETWORKS, which no document can say)."""
    from caesar_rest.egress import literal_refusal

    subscriber = body.get("subscriber") if isinstance(body, dict) else None
    urls = subscriber.values() if isinstance(subscriber, dict) else ()
    return any(isinstance(url, str) and literal_refusal(rules, url) for url in urls)
