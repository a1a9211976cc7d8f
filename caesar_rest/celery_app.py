"""Celery, built once from the settings; the API only publishes by task name and never imports the tasks."""
from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Producer, Queue

from .config import queue_name

RUN_TASK = "caesar.run_job"
POLL_TASK = "caesar.poll_job"
REAP_TASK = "caesar.reap"
NOTIFY_TASK = "caesar.notify"
NOTIFY_SWEEP_TASK = "caesar.notify_sweep"
#: The reaper's and the notifications' queue, of its own so long jobs never hold it up: served by the worker started
#: with --beat (`caesar-rest run`, the tests) or, in production, by caesar-worker@control.
CONTROL_QUEUE = "control"


def broker_options(settings: Mapping[str, Any]) -> dict[str, Any]:
    url = settings["BROKER_URL"]
    if url.startswith("filesystem://"):
        base = Path(settings["ROOT"]) / "broker"
        folders = {"data_folder_in": base / "queue", "data_folder_out": base / "queue",
                   "processed_folder": base / "processed", "control_folder": base / "control"}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        return {**{k: str(v) for k, v in folders.items()}, "store_processed": False, "polling_interval": 0.05}
    if url.startswith(("amqp", "pyamqp")):
        return {"confirm_publish": True, "max_retries": 2, "interval_start": 0, "interval_step": 0.5}
    return {"max_retries": 2}


def make_celery(settings: Mapping[str, Any]) -> Celery:
    from . import db

    db.configure(settings)          # a worker's connections are made with the settings' limits
    celery = Celery("caesar_rest", include=["workers.tasks"])
    result_backend = settings["RESULT_BACKEND"]
    if result_backend.startswith("file://"):
        Path(result_backend[len("file://"):]).mkdir(parents=True, exist_ok=True)
    names = [queue_name(settings, name) for name in [*settings["BACKENDS"], CONTROL_QUEUE]]
    queues = [Queue(name, routing_key=name) for name in names]
    if settings["BROKER_URL"].startswith("filesystem://"):
        celery.conf.broker_transport = "caesar_rest.fstransport:Transport"   # atomic message files
    celery.conf.update(
        broker_url=settings["BROKER_URL"],
        result_backend=result_backend,
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_queues=queues,
        task_default_queue=queue_name(settings, settings["DEFAULT_BACKEND"]),
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_expires=3600,
        task_ignore_result=True,
        # A job message is acknowledged when the task returns, so a worker that dies mid-job has it
        # redelivered; the task itself makes redelivery safe (atomic claim, lost-worker detection).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        beat_schedule={"reap": {"task": REAP_TASK, "schedule": float(settings["REAPER_INTERVAL"]),
                                "options": {"queue": queue_name(settings, CONTROL_QUEUE)}},
                       "notify-sweep": {"task": NOTIFY_SWEEP_TASK,
                                        "schedule": float(settings["NOTIFY_SWEEP_INTERVAL"]),
                                        "options": {"queue": queue_name(settings, CONTROL_QUEUE)}}},
        beat_schedule_filename=str(Path(settings["ROOT"]) / "celerybeat-schedule"),
        caesar_settings=dict(settings),
    )
    from . import notify

    notify.check_settings(settings)
    notify.register_publisher(settings["DATABASE_URL"],
                              lambda ids: publish_notifications(celery, settings, ids))
    return celery


def publish_notifications(celery: Celery, settings: Mapping[str, Any], delivery_ids: Iterable[int],
                          countdown: float | None = None) -> None:
    """Send notification deliveries to the control queue (no retry: a delivery whose message is lost is found by
    the sweep, and a broker that is down must not hold up the job that made the change)."""
    queue = queue_name(settings, CONTROL_QUEUE)
    for delivery_id in delivery_ids:
        celery.send_task(NOTIFY_TASK, args=[delivery_id], queue=queue, routing_key=queue, retry=False,
                         ignore_result=True, countdown=countdown)


#: A job message's publish retries (then publish_or_withdraw answers 503 and removes the job).
RUN_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}
_producers = threading.local()


def _run_producer(celery: Celery) -> Producer:
    """This thread's producer for job messages, on a broker connection of its own, kept for the thread's life: a
    POST /job then costs one publish and its confirm, with no pool checkout (Celery's producer pool took a third
    of send_task's CPU). Made again after a fork (a connection is never shared by two processes); a broken
    connection is revived by the publish's retry (kombu's ensure)."""
    held: weakref.WeakKeyDictionary[Celery, Producer] | None = getattr(_producers, "by_app", None)
    if held is None or _producers.pid != os.getpid():
        held = _producers.by_app = weakref.WeakKeyDictionary()      # an app gone takes its producer along
        _producers.pid = os.getpid()
    producer = held.get(celery)
    if producer is None:
        producer = held[celery] = Producer(celery.connection_for_write())
    return producer


def publish_run(celery: Celery, settings: Mapping[str, Any], job_id: str, backend: str) -> None:
    """Send a job to its backend's worker pool. Raises kombu/amqp errors when the broker is down.

    The message is the one `send_task` would send (Celery's own protocol-2 builder, as_task_v2: workers parse it
    as any task), published by this thread's cached producer: send_task's routing, signals, result object and
    producer-pool checkout were more than half its CPU, and POST /job is CPU-bound."""
    name = queue_name(settings, backend)
    queue = celery.amqp.queues[name]
    # ignore_result: nobody waits on this task's result (the database has the job's state), so no result is
    # stored. argsrepr given: Celery's saferepr of the one id costs more than the rest of the message.
    headers, properties, body, _event = celery.amqp.as_task_v2(
        job_id, RUN_TASK, args=[job_id], ignore_result=True, argsrepr=f"[{job_id!r}]", kwargsrepr="{}",
        origin=_origin())
    # As send_task on a direct queue: the default exchange, routed by the queue's name, the queue declared
    # first (once per connection: kombu caches it), a persistent message, JSON.
    _run_producer(celery).publish(body, exchange="", routing_key=name, declare=[queue], serializer="json",
                                  headers=headers, delivery_mode=2, retry=True, retry_policy=RUN_RETRY_POLICY,
                                  **properties)


@functools.cache
def _origin() -> str:
    from celery.utils.nodenames import anon_nodename

    return anon_nodename()
