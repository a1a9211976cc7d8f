"""Celery tasks: one path for every job (run → follow or poll → finish), plus the reaper and the notifications."""
from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import celeryd_after_setup, worker_process_init, worker_ready
from sqlalchemy import select

from caesar_rest.celery_app import (
    NOTIFY_SWEEP_TASK,
    NOTIFY_TASK,
    POLL_TASK,
    REAP_TASK,
    RUN_TASK,
    publish_notifications,
    publish_run,
)
from caesar_rest.config import queue_name
from caesar_rest.db import dispose_all, session_scope
from caesar_rest.models import Job
from caesar_rest.states import PENDING

from . import lost, notify
from .runner import Runner, reap

log = logging.getLogger("caesar.tasks")


def _settings(task) -> dict:
    return task.app.conf["caesar_settings"]


def schedule_poll(app, job_id: str, countdown: float | None = None, follower: str | None = None) -> None:
    """Queue the next poll of a remote job on its backend's pool; follower is the poll chain's token (none: a new
    chain, which takes the job only from a follower gone stale)."""
    settings = app.conf["caesar_settings"]
    with session_scope(settings["DATABASE_URL"]) as s:
        backend = s.scalar(select(Job.backend).where(Job.id == job_id)) or settings["DEFAULT_BACKEND"]
    app.send_task(POLL_TASK, args=[job_id], kwargs={"follower": follower} if follower else {},
                  queue=queue_name(settings, backend),
                  countdown=settings["REMOTE_POLL_INTERVAL"] if countdown is None else countdown)


def _reap(app) -> dict:
    settings = app.conf["caesar_settings"]
    return reap(settings, publish=lambda job_id, backend: publish_run(app, settings, job_id, backend),
                follow=lambda job_id: schedule_poll(app, job_id, countdown=0))


@shared_task(name=RUN_TASK, bind=True)
def run_job(self, job_id: str) -> str:
    runner = Runner(_settings(self))
    outcome = runner.run(job_id)
    if outcome == "poll":
        schedule_poll(self.app, job_id, follower=runner.follower)
    elif outcome == PENDING:               # an attempt ended for a reason its app retries on: run it again
        _publish_again(self.app, job_id)
    return outcome


@shared_task(name=POLL_TASK, bind=True)
def poll_job(self, job_id: str, follower: str | None = None) -> str:
    """Follows a remote job without holding a worker slot: one poll, then re-scheduled with a countdown, by the
    chain that holds the job (another chain's poll returns 'followed' and ends there)."""
    runner = Runner(_settings(self))
    outcome = runner.poll_once(job_id, follower=follower)
    if outcome == "poll":
        schedule_poll(self.app, job_id, follower=runner.follower)
    elif outcome == PENDING:
        _publish_again(self.app, job_id)
    return outcome


def _publish_again(app, job_id: str) -> None:
    """A retried job's next attempt, on its pool (a broker refusal leaves it to the reaper's republish)."""
    settings = app.conf["caesar_settings"]
    with session_scope(settings["DATABASE_URL"]) as s:
        backend = s.scalar(select(Job.backend).where(Job.id == job_id)) or settings["DEFAULT_BACKEND"]
    try:
        publish_run(app, settings, job_id, backend)
    except Exception:
        log.exception("job %s: the retry was not published; the reaper will", job_id)


@shared_task(name=REAP_TASK, bind=True, ignore_result=True)
def reap_jobs(self) -> dict:
    settings = _settings(self)
    if not lost.take_turn(settings, "reap", float(settings["REAPER_INTERVAL"])):
        return {"skipped": "another beat's reaper ran within REAPER_INTERVAL"}
    return _reap(self.app)


def _notify_publisher(app):
    settings = app.conf["caesar_settings"]
    return lambda ids, countdown: publish_notifications(app, settings, ids, countdown)


@shared_task(name=NOTIFY_TASK, bind=True, ignore_result=True)
def send_notification(self, delivery_id: int) -> None:
    """One try at a notification, in this process's notify threads (workers/notify.py): never holds the queue."""
    notify.submit(_settings(self), _notify_publisher(self.app), int(delivery_id))


@shared_task(name=NOTIFY_SWEEP_TASK, bind=True, ignore_result=True)
def sweep_notifications(self) -> int:
    settings = _settings(self)
    if not lost.take_turn(settings, "notify-sweep", float(settings["NOTIFY_SWEEP_INTERVAL"])):
        return 0
    return notify.sweep(settings, _notify_publisher(self.app))


@celeryd_after_setup.connect
def _refuse_without_sandbox(sender=None, instance=None, **_kwargs) -> None:
    """A worker of the local pool starts only when its jobs can be sandboxed (SANDBOX: none opts out, unsafe)."""
    settings = instance.app.conf["caesar_settings"]
    consumed = set(instance.app.amqp.queues.consume_from or instance.app.amqp.queues)
    if "local" not in (settings.get("BACKENDS") or {}) or queue_name(settings, "local") not in consumed:
        return
    from .backends import get_backend
    from .backends.base import BackendError
    from .backends.local import LocalBackend

    backend = get_backend(settings, "local")
    if not isinstance(backend, LocalBackend):      # an operator's own class under the name: its own checks
        return
    try:
        described = backend.check_sandbox()
    except BackendError as exc:
        log.critical("refusing to start: %s (SANDBOX: none runs jobs unsandboxed, unsafe)", exc)
        raise SystemExit(f"caesar-rest worker: refusing to start: {exc}") from None
    (log.warning if described.startswith("SANDBOX is none") else log.info)("local backend: %s", described)


@worker_process_init.connect
def _fresh_connections(**_kwargs) -> None:
    # Pooled DB connections must not be shared across the fork.
    dispose_all()


@worker_ready.connect
def _reap_on_start(sender=None, **_kwargs) -> None:
    """A restarted worker settles the jobs its dead predecessor on this host left running."""
    try:
        result = _reap(sender.app)
        log.info("reaper at start: %s", result)
    except Exception:
        log.exception("reaper at worker start failed")
