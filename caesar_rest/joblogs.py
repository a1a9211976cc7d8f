"""A job's stdout and stderr, wherever they are. A finished job's come from its S3 copy when it has one, else from
its directory. While a job runs on another host with no shared filesystem (STORAGE s3), its directory is not on the
API's disk: the worker that runs it relays the logs' tails to S3 every LIVE_LOG_INTERVAL seconds
(<S3_PREFIX>live/<owner>/<job_id>/), and the API reads those. The worker removes its relayed copy once the job's end
names the S3 copy of the whole directory; a job whose worker host died keeps its last relayed tails, readable."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import s3store

NAMES = ("stdout", "stderr")
MAX_BYTES = 1024 * 1024        # the most of each log an answer carries (its tail) and the most a relay sends


def live_url(store: s3store.S3Store, owner: str, job_id: str) -> str:
    return f"s3://{store.bucket}/{store.prefix}live/{owner}/{job_id}/"


def relays(settings: Mapping[str, Any]) -> bool:
    """Whether running jobs' logs are relayed to S3 (and read from there when the job's directory is elsewhere)."""
    return settings.get("STORAGE") == "s3" and float(settings.get("LIVE_LOG_INTERVAL") or 0) > 0


def lines_of(data: bytes, lines: int | None) -> str:
    text = data.decode("utf-8", "replace")
    if lines is not None:
        text = "\n".join(text.splitlines()[-lines:]) if lines else ""
    return text


def tail_bytes(path: Path, max_bytes: int = MAX_BYTES) -> bytes | None:
    """The last max_bytes of a file; None when it does not exist."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read()
    except FileNotFoundError:
        return None


def read(settings: Mapping[str, Any], job: Any, lines: int | None, max_bytes: int = MAX_BYTES) -> dict[str, str]:
    """{"stdout": text, "stderr": text} of a job (a Job row: workdir, owner, id, state, extra), each its last
    max_bytes, then its last `lines` lines when given."""
    archived = (job.extra or {}).get("output_store")
    if archived:
        store = s3store.store_for(settings)
        return {n: lines_of(s3store.read_tail(store, archived, f"{n}.log", max_bytes), lines) for n in NAMES}
    workdir = Path(job.workdir)
    local = {n: tail_bytes(workdir / f"{n}.log", max_bytes) for n in NAMES}
    if all(v is None for v in local.values()) and job.state != "PENDING" and relays(settings):
        store = s3store.store_for(settings)
        url = live_url(store, job.owner, job.id)
        return {n: lines_of(s3store.read_tail(store, url, f"{n}.log", max_bytes), lines) for n in NAMES}
    return {n: lines_of(v or b"", lines) for n, v in local.items()}
