"""Nothing lost: a redelivered message, a job whose worker died, and the reaper that finds them."""
from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from caesar_rest import storage
from caesar_rest.backends import BackendError, get_backend
from caesar_rest.db import session_scope
from caesar_rest.models import Job, utcnow
from caesar_rest.states import FAILURE, PENDING, RUNNING, STARTED, TERMINAL_STATES

from .backends.local import kill_group, process_alive
from .kinds import Ending

if TYPE_CHECKING:
    from .runner import Runner

log = logging.getLogger("caesar.runner")
HOST = socket.gethostname()


def on_redelivery(runner: Runner, job_id: str) -> str:
    """The message came again (broker redelivery after a worker died, or a republish) for a job already claimed."""
    with session_scope(runner.url) as s:
        job = s.get(Job, job_id)
        if job is None:
            return "missing"
        if job.state in TERMINAL_STATES:
            return job.state            # finished: never run twice
        worker_pid = (job.extra or {}).get("worker_pid")
        same_host_dead = job.host == HOST and worker_pid and not process_alive(int(worker_pid))
        stale = job.heartbeat_at is None or \
            (utcnow() - job.heartbeat_at).total_seconds() > float(runner.settings["STALE_AFTER"])
    if same_host_dead or stale:
        return declare_lost(runner, job_id, "the worker running it died")
    return "duplicate"                  # another live worker runs it


def declare_lost(runner: Runner, job_id: str, why: str) -> str:
    """The job's worker is gone: a remote job is followed again ('poll'); anything else ends FAILURE, its leftovers
    stopped. Never re-run."""
    with session_scope(runner.url) as s:
        job = s.get(Job, job_id)
        if job is None or job.state in TERMINAL_STATES:
            return job.state if job else "missing"
        if job.backend == "local" and job.pid and job.host == HOST and process_alive(job.pid, job_id):
            kill_group(job.pid, float(runner.settings["CANCEL_GRACE"]))   # an orphan of the dead worker
        backend_name, handle, state, host = job.backend, job.handle, job.state, job.host
    try:
        backend = get_backend(runner.settings, backend_name)
    except BackendError:
        backend = None
    if backend is not None and handle and not backend.blocking:
        # The remote job may well be alive: only its follower was lost. Keep following it.
        return "poll"
    leftovers = ""
    if backend is not None and handle and backend.name != "local":
        # An in-slot job outside this process (a container) outlives its worker: stop and remove it.
        try:
            backend.cancel(handle)
            backend.cleanup(handle)
        except Exception as exc:
            log.exception("stopping the lost job %s on %s failed", job_id, backend_name)
            leftovers = f"; stopping it on the {backend_name} backend failed: {exc}"
    runner.end(job_id, Ending(FAILURE, f"Job lost: {why} while it was {state} (worker {host}); "
                                       f"it was not re-run{leftovers}"))
    return FAILURE


def reap(settings: Mapping[str, Any], publish: Callable[[str, str], Any],
         follow: Callable[[str], Any]) -> dict[str, int]:
    """Stale running jobs are declared lost (or re-followed), old PENDING ones re-published."""
    from .runner import Runner

    url = settings["DATABASE_URL"]
    now = utcnow()
    stale_cut = now - timedelta(seconds=float(settings["STALE_AFTER"]))
    pending_cut = now - timedelta(seconds=float(settings["PENDING_REPUBLISH_AFTER"]))
    with session_scope(url) as s:
        stale = s.execute(select(Job.id, Job.host, Job.extra).where(Job.state.in_((STARTED, RUNNING)),
                                                                    Job.heartbeat_at < stale_cut)).all()
        pending = s.execute(select(Job.id, Job.backend)
                            .where(Job.state == PENDING, Job.submit_date < pending_cut)).all()
        local_dead = s.execute(select(Job.id, Job.extra).where(Job.state.in_((STARTED, RUNNING)),
                                                              Job.host == HOST)).all()
    runner = Runner(settings)
    lost = 0
    dead = {jid for jid, extra in local_dead
            if (extra or {}).get("worker_pid") and not process_alive(int(extra["worker_pid"]))}
    for job_id in {jid for jid, _h, _e in stale} | dead:
        why = "the worker running it died" if job_id in dead else "no heartbeat from its worker"
        if declare_lost(runner, job_id, why) == "poll":
            follow(job_id)
        else:
            lost += 1
    for job_id, backend in pending:
        publish(job_id, backend)
    stale_parts = storage.remove_stale_uploads(settings["DATA_DIR"], float(settings["STALE_UPLOAD_AFTER"]))
    return {"lost": lost, "republished": len(pending), "stale_uploads_removed": stale_parts}
