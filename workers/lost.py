"""Nothing lost: a redelivered message, a job whose worker died, and the reaper that finds them."""
from __future__ import annotations

import hashlib
import logging
import math
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import insert, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError

from caesar_rest import metrics, resumable, storage
from caesar_rest.backends import BackendError, get_backend
from caesar_rest.db import session_scope
from caesar_rest.models import Job, Mark, utcnow
from caesar_rest.states import FAILURE, PENDING, RUNNING, STARTED, TERMINAL_STATES

from .backends.local import kill_group, process_alive
from .kinds import Ending

if TYPE_CHECKING:
    from .runner import Runner

log = logging.getLogger("caesar.runner")
HOST = socket.gethostname()
#: How long the reaper waits for the workers' answers to its ping (the broker's view of who is alive).
PING_TIMEOUT = 1.0
#: declare_lost's answer for a job already at a later attempt than the one judged lost.
MOVED_ON = "moved on"
#: At most this many PENDING jobs republished by one reaper run (the oldest first), and at most LOST_BATCH jobs
#: declared lost: a run stays bounded (under a second with a million jobs in the table: bench/scale.py), a backlog
#: of a hundred thousand is worked through over the next runs, and a run never holds the control queue for minutes.
REPUBLISH_BATCH = 1000
LOST_BATCH = 200


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
        attempt = job.attempts
    if same_host_dead or stale:
        return declare_lost(runner, job_id, "the worker running it died", attempt)
    return "duplicate"                  # another live worker runs it


def declare_lost(runner: Runner, job_id: str, why: str, attempt: int | None = None) -> str:
    """The job's worker is gone: a remote job is followed again ('poll'), one whose submission the backend took
    without its reply being recorded too (adopted); anything else ends FAILURE, its leftovers stopped (or PENDING
    when its app retries lost attempts). Never re-run otherwise. attempt: the attempt judged lost; a job already
    at a later one (the other judge, the reaper or a redelivery, declared it lost first and it runs again) is left
    alone: "moved on"."""
    with session_scope(runner.url) as s:
        job = s.get(Job, job_id)
        if job is None or job.state in TERMINAL_STATES:
            return job.state if job else "missing"
        if attempt is not None and job.attempts != attempt:
            return MOVED_ON
        if job.backend == "local" and job.pid and job.host == HOST and process_alive(job.pid, job_id):
            kill_group(job.pid, float(runner.settings["CANCEL_GRACE"]))   # an orphan of the dead worker
        backend_name, handle, state, host = job.backend, job.handle, job.state, job.host
        workdir, began = Path(job.workdir), job.start_date
    try:
        backend = get_backend(runner.settings, backend_name)
    except BackendError:
        backend = None
    if backend is not None and handle and not backend.blocking:
        # The remote job may well be alive: only its follower was lost. Keep following it.
        return "poll"
    leftovers = ""
    if backend is not None and not handle and not backend.blocking:
        # The worker may have died after the backend took the submission, before the handle was recorded: a job the
        # backend holds for this attempt is adopted and followed, never left running unseen nor made twice.
        try:
            handle = backend.adopt(job_id, workdir, began.replace(tzinfo=UTC).timestamp() if began else math.inf)
        except Exception as exc:
            log.exception("looking for the lost job %s on %s failed", job_id, backend_name)
            leftovers = f"; looking for it on the {backend_name} backend failed ({exc}): a later try adopts it"
        recorded = _adopted(runner, job_id, handle) if handle else None
        if recorded is not None:
            if handle and recorded != handle:
                # Another look (the redelivered message and the reaper both look) recorded a job of its own first.
                backend.cancel(handle)
                backend.cleanup(handle)
            log.warning("job %s: adopted %s on %s, submitted by a worker that died before recording it", job_id,
                        recorded, backend_name)
            return "poll"
    if backend is not None and handle and backend.name != "local":
        # An in-slot job outside this process (a container) outlives its worker: stop and remove it.
        try:
            backend.cancel(handle)
            backend.cleanup(handle)
        except Exception as exc:
            log.exception("stopping the lost job %s on %s failed", job_id, backend_name)
            leftovers = f"; stopping it on the {backend_name} backend failed: {exc}"
    how = Ending(FAILURE, f"Job lost: {why} while it was {state} (worker {host}); it was not re-run{leftovers}",
                 retry_reason="lost", attempt=attempt)
    return runner.end(job_id, how)         # FAILURE, or PENDING when its app retries lost attempts


def _adopted(runner: Runner, job_id: str, handle: str) -> str | None:
    """The handle the still active job follows: the adopted one, recorded if it has none yet, or the one another
    look recorded first; None when the job is no longer active (the caller then stops the adopted one)."""
    with session_scope(runner.url) as s:
        done = s.execute(update(Job).where(Job.id == job_id, Job.handle.is_(None), Job.state.in_((STARTED, RUNNING)))
                         .values(handle=handle, heartbeat_at=utcnow()))
        if cast(CursorResult[Any], done).rowcount:
            return handle
        job = s.get(Job, job_id)
        return job.handle if job is not None and job.state in (STARTED, RUNNING) and job.handle else None


def watching_since(settings: Mapping[str, Any], s: Any, now: datetime) -> datetime:
    """Since when the reaper has reached the database without a gap, kept in the marks table, shared by every
    reaper. A gap is a pause between two runs long enough to hide an outage that made healthy heartbeats stale:
    a heartbeat is at most the pause + HEARTBEAT_INTERVAL old when the database comes back, so any pause over
    STALE_AFTER - 2 x HEARTBEAT_INTERVAL counts (and never one as short as REAPER_INTERVAL, the runs' spacing)."""
    gap = timedelta(seconds=max(float(settings["REAPER_INTERVAL"]) + 1,
                                float(settings["STALE_AFTER"]) - 2 * float(settings["HEARTBEAT_INTERVAL"])))
    seen, since = s.get(Mark, "reaper_seen"), s.get(Mark, "reaper_since")
    start = since.at if since is not None else now
    if seen is None or since is None or now - seen.at > gap:
        start = now
        _set_mark(s, "reaper_since", now)
    _set_mark(s, "reaper_seen", now)
    return start


def _set_mark(s: Any, name: str, at: datetime) -> None:
    """Upsert, safe against a second reaper doing the same (the worker-start reaper and beat's)."""
    if cast(CursorResult[Any], s.execute(update(Mark).where(Mark.name == name).values(at=at))).rowcount:
        return
    try:
        with s.begin_nested():
            s.execute(insert(Mark).values(name=name, at=at))
    except IntegrityError:
        s.execute(update(Mark).where(Mark.name == name).values(at=at))


def take_turn(settings: Mapping[str, Any], name: str, every: float) -> bool:
    """Whether a scheduled run of `name` goes ahead: at most one every `every` seconds (less a fifth, the beats'
    jitter) across every beat of the deployment, decided by the marks table's row for it. So celery beat can run
    on every host (the caesar-beat unit on each, or --beat on each control worker): a host that dies takes no
    schedule with it, and the others' beats do not multiply the runs. Two beats at the same instant: the row's lock
    lets one UPDATE through, and the other, re-reading the row after it, finds the turn taken."""
    now = utcnow()
    cut = now - timedelta(seconds=0.8 * every)
    key = f"turn:{name}"
    with session_scope(settings["DATABASE_URL"]) as s:
        if cast(CursorResult[Any], s.execute(update(Mark).where(Mark.name == key, Mark.at <= cut)
                                             .values(at=now))).rowcount:
            return True
        if s.get(Mark, key) is not None:
            return False
        try:
            with s.begin_nested():
                s.execute(insert(Mark).values(name=key, at=now))
        except IntegrityError:
            return False
        return True


def broker_view() -> set[str] | None:
    """The workers the broker reaches now: the node names that answer a ping (Celery's broadcast, on RabbitMQ and
    on the filesystem broker alike), or None when there is no view (no Celery app of this service in this process,
    the broker unreachable, or nobody answered: a pool that cannot answer says nothing about its jobs)."""
    from celery import current_app

    if not current_app.conf.get("caesar_settings"):
        return None
    try:
        replies = current_app.control.ping(timeout=PING_TIMEOUT)
    except Exception as exc:            # the broker down: the heartbeats alone decide
        log.warning("the reaper could not ping the workers: %s", exc)
        return None
    return {name for reply in replies for name in reply} or None


def absent_nodes(settings: Mapping[str, Any], s: Any, now: datetime, nodes: set[str],
                 view: set[str] | None) -> set[str]:
    """Of `nodes` (the workers of jobs that stopped beating), those the broker has not seen for two heartbeat
    intervals in a row: a node missing from one ping may be reconnecting. When a node was first missed is kept in
    the marks table ('absent:<digest of its name>'), and forgotten once it answers, holds no quiet job, or the
    broker gave no view (then nobody knows for how long it has been away)."""
    after = timedelta(seconds=2 * float(settings["HEARTBEAT_INTERVAL"]))
    marks = {m.name: m for m in s.execute(select(Mark).where(Mark.name.like("absent:%"))).scalars()}
    missing = {_absent_mark(node): node for node in nodes - (view or set())} if view is not None else {}
    gone = set()
    for name, node in missing.items():
        mark = marks.get(name)
        if mark is None:
            _set_mark(s, name, now)
        elif now - mark.at >= after:
            gone.add(node)
    for name, mark in marks.items():
        if name not in missing:
            s.delete(mark)
    return gone


def _absent_mark(node: str) -> str:
    return "absent:" + hashlib.sha256(node.encode()).hexdigest()[:40]


def reap(settings: Mapping[str, Any], publish: Callable[[str, str], Any],
         follow: Callable[[str], Any], view: Callable[[], set[str] | None] = broker_view) -> dict[str, int]:
    """Jobs whose worker is gone are declared lost (or re-followed), old PENDING ones re-published, at most once per
    PENDING_REPUBLISH_AFTER each (and when a worker is found gone from the broker, since it may hold their messages).
    A worker is gone when its pid is dead on this host (proof at once), when the broker
    has not seen it for two heartbeat intervals while its jobs stopped beating (a worker on another host that died
    or froze), or when its heartbeat is older than STALE_AFTER. The heartbeat rule counts only once the reaper has
    had the database for REAPER_DB_GRACE (default STALE_AFTER) without a gap: after an outage the workers'
    heartbeats need time to be stored again, and their jobs are healthy; the broker's view, after three heartbeat
    intervals (or REAPER_DB_GRACE when shorter)."""
    from .runner import Runner

    url = settings["DATABASE_URL"]
    now = utcnow()
    stale_cut = now - timedelta(seconds=float(settings["STALE_AFTER"]))
    pending_cut = now - timedelta(seconds=float(settings["PENDING_REPUBLISH_AFTER"]))
    grace = settings.get("REAPER_DB_GRACE")
    grace = float(settings["STALE_AFTER"] if grace is None else grace)
    with session_scope(url) as s:
        watched = (now - watching_since(settings, s, now)).total_seconds()
        judging = watched >= grace
        # The broker's view needs less: after a gap the heartbeat threads beat again within one interval, and a
        # node that answers the ping is never gone, whatever its heartbeats say.
        judging_view = watched >= min(grace, 3 * float(settings["HEARTBEAT_INTERVAL"]))
        stale: dict[str, int] = dict(s.execute(select(Job.id, Job.attempts).where(
            Job.state.in_((STARTED, RUNNING)), Job.heartbeat_at < stale_cut)).all()) if judging else {}
        pending = s.execute(select(Job.id, Job.backend).where(
            Job.state == PENDING, Job.submit_date < pending_cut,
            or_(Job.republished_at.is_(None), Job.republished_at < pending_cut))
            .order_by(Job.submit_date, Job.id).limit(REPUBLISH_BATCH)).all()
        if pending:
            s.execute(update(Job).where(Job.id.in_([jid for jid, _b in pending]), Job.state == PENDING)
                      .values(republished_at=now))
        # A job of this host whose worker pid is dead is proof at once, unless someone still beats for it (a
        # remote job's poll chain, on another worker process): then there is nothing to re-follow.
        beating = now - timedelta(seconds=2 * max(float(settings["HEARTBEAT_INTERVAL"]),
                                                  float(settings["REMOTE_POLL_INTERVAL"])))
        quiet = s.execute(select(Job.id, Job.host, Job.extra, Job.attempts).where(
            Job.state.in_((STARTED, RUNNING)), or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < beating))).all()
        nodes = {extra["worker_node"] for _j, _h, extra, _a in quiet if (extra or {}).get("worker_node")}
    seen = view() if nodes and judging_view else None     # the ping (a second) holds no transaction open
    with session_scope(url) as s:
        absent = absent_nodes(settings, s, now, nodes, seen)
        if absent:      # the gone worker may hold messages of jobs it never started: they are published again
            held = s.execute(select(Job.id, Job.backend).where(
                Job.state == PENDING, Job.submit_date < now - timedelta(seconds=float(settings["REAPER_INTERVAL"])),
                Job.id.notin_([jid for jid, _b in pending]),
                or_(Job.republished_at.is_(None), Job.republished_at < pending_cut))
                .order_by(Job.submit_date, Job.id).limit(max(0, REPUBLISH_BATCH - len(pending)))).all()
            if held:
                s.execute(update(Job).where(Job.id.in_([jid for jid, _b in held]), Job.state == PENDING)
                          .values(republished_at=now))
                pending = [*pending, *held]
    runner = Runner(settings)
    lost = 0
    retried: list[str] = []
    dead = {jid for jid, host, extra, _a in quiet if host == HOST
            if (extra or {}).get("worker_pid") and not process_alive(int(extra["worker_pid"]))}
    unseen = {jid for jid, _h, extra, _a in quiet if (extra or {}).get("worker_node") in absent} - dead
    # The attempt each was judged at: by the time it is declared lost, another judge may have done so and a new
    # attempt run, which is not lost (its processes were killed as the old one's orphans, seen in CI).
    attempts = {**stale, **{jid: attempt for jid, _h, _e, attempt in quiet}}
    # Proof first (a dead pid, gone from the broker), then the stale: LOST_BATCH a run, the rest in the next runs.
    judged = [*sorted(dead), *sorted(unseen - dead), *sorted(set(stale) - dead - unseen)][:LOST_BATCH]
    for job_id in judged:
        why = "the worker running it died" if job_id in dead else \
            "its worker is gone from the broker" if job_id in unseen else "no heartbeat from its worker"
        outcome = declare_lost(runner, job_id, why, attempts[job_id])
        if outcome == MOVED_ON:
            continue
        if outcome == "poll":
            follow(job_id)
        elif outcome == PENDING:
            retried.append(job_id)
        else:
            lost += 1
    for job_id, backend in pending:
        publish(job_id, backend)
    if retried:
        with session_scope(url) as s:
            backends: dict[str, str] = dict(s.execute(select(Job.id, Job.backend).where(Job.id.in_(retried))).all())
        for job_id in retried:
            publish(job_id, backends[job_id])
    stale_parts = storage.remove_stale_uploads(settings["DATA_DIR"], float(settings["STALE_UPLOAD_AFTER"]))
    with session_scope(url) as s:       # resumable uploads past their expiry, with their part files
        expired = resumable.remove_expired(settings, s)
    try:                                # the deltas /metrics sums, folded (migration 0009): scrapes stay small
        counts = metrics.compact_job_counts(url)
    except Exception:                   # the counts stay right unfolded; the next run or scrape folds them
        log.exception("folding job_counts failed")
        counts = -1
    return {"job_counts_rows": counts,
            "lost": lost, "republished": len(pending), "retried": len(retried), "stale_uploads_removed": stale_parts,
            "judged_staleness": int(judging), "expired_uploads_removed": expired}
