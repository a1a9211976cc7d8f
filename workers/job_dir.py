"""What a finished job leaves behind, for the runner: the output manifest, caesar_job.json, the S3 copy of the job
directory (with S3 storage) and the reason a failed exit is given."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caesar_rest import s3store
from caesar_rest.jobs import to_metadata
from caesar_rest.models import Job

from .backends.base import BackendStatus

log = logging.getLogger("caesar.runner")


def output_manifest(job_id: str, workdir: Path) -> list[dict[str, Any]] | None:
    """Size, sha256 and CRC64NVME of each output file, kept with the job (metadata 'outputs') by the runner,
    in the transaction that ends the job (one commit fewer per job)."""
    try:
        return s3store.output_manifest(workdir) if workdir.is_dir() else []
    except OSError as exc:
        log.warning("job %s: output checksums not computed: %s", job_id, exc)
        return None


def write_metadata(settings: Mapping[str, Any], job: Job, archived: str | None) -> None:
    """caesar_job.json beside the outputs (the database keeps the record; downloads build theirs from it)."""
    body = json.dumps(to_metadata(job), indent=2).encode()      # json.dump: a write() call per token
    workdir = Path(job.workdir)
    if archived:
        try:
            s3store.put_job_file(s3store.store_for(settings), archived, "caesar_job.json", body)
        except Exception as exc:
            log.warning("job %s: caesar_job.json not written to S3: %s", job.id, exc)
        shutil.rmtree(workdir, ignore_errors=True)
    elif workdir.is_dir():
        part = workdir.parent / f".{job.id}.caesar_job.json.part"      # renamed in: never read half-written
        try:
            part.write_bytes(body)
            part.replace(workdir / "caesar_job.json")
        except OSError as exc:
            log.warning("job %s: caesar_job.json not written: %s", job.id, exc)
            part.unlink(missing_ok=True)


def archive(settings: Mapping[str, Any], job_id: str, owner: str, workdir: Path,
            manifest: list[dict[str, Any]] | None) -> dict[str, str]:
    """Job outputs live in S3 too: the finished job directory is copied there (the API streams it back).
    Returns what the job's record keeps: {"output_store": url}, or {"output_store_error": why}."""
    try:
        return {"output_store": s3store.upload_job_dir(s3store.store_for(settings), owner, job_id,
                                                       workdir, manifest)}
    except Exception as exc:       # the job's result stands; its files stay on the local disk
        log.error("job %s: outputs not archived to S3: %s", job_id, exc)
        return {"output_store_error": str(exc)}


def drop_archive(settings: Mapping[str, Any], job_id: str, url: str) -> None:
    """Remove a copy that no end names (another writer ended the job first)."""
    try:
        s3store.delete_job_dir(s3store.store_for(settings), url)
    except Exception as exc:
        log.warning("job %s: the S3 copy of its directory (%s) was not removed: %s", job_id, url, exc)


def exit_message(rc: int | None, status: BackendStatus, workdir: Path) -> str:
    if status.oom_killed:
        return f"Process killed: memory limit exceeded (exit status {rc})"
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"Process killed by {name}"
    message = f"Process exited with status {rc}"
    if _disk_full(workdir):
        return f"{message}: No space left on device in the job directory"
    last = _last_line(workdir / "stderr.log")
    if last:
        if "MemoryError" in last or "Cannot allocate memory" in last:
            message += " (memory limit exceeded?)"
        message += f": {last[:300]}"
    return message


def _disk_full(path: Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 256 * 1024


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 4096))
            lines = [ln for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1].strip() if lines else ""
    except OSError:
        return ""
