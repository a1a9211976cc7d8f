"""Job kinds: the kinds of job the engine runs, and what each provides.

Every kind shares the engine: one jobs table, the states and transitions of caesar_rest/states.py, the queues, the
backends and the runner. A kind provides
  - validation: `create()` checks a request of its API and inserts the PENDING job (states.insert_job, the one
    builder of job rows), or raises a CaesarError naming the problem, with nothing written;
  - staging, commands and outputs: its worker side (`worker`, an import string of a workers.kinds.KindRun), which
    stages the inputs, gives the runner its commands one by one, and collects the outputs;
  - the view of its state: `view()`, the job as its API shows it.
App jobs (caesar-rest's own API) and TES tasks are the two kinds today. An OGC API - Processes job will be a third
kind (its own create() and view() and, for an app run through OGC, the app kind's worker side), or app jobs seen
through another view. Adding a kind: a class here, its entry in KINDS, its worker side in workers/, its HTTP surface
in caesar_rest/api/.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from sqlalchemy.orm import Session

from .apps import Registry
from .jobs import create_job, to_metadata, to_status, to_summary
from .models import Job
from .tes import create_task, render


class JobKind(Protocol):
    name: ClassVar[str]             # the job row's `kind`
    worker: ClassVar[str]           # "module:Class" of its worker side, resolved with kombu's symbol_by_name

    def create(self, session: Session, settings: Mapping[str, Any], owner: str, body: Any) -> Job:
        """Validate a request and insert its PENDING job (the caller commits, then publishes)."""

    def view(self, job: Job, view: str | None = None) -> dict[str, Any]:
        """The job as this kind's API shows it."""


class AppKind:
    """A registered app run with options (POST /api/v1.0/job)."""

    name: ClassVar[str] = "app"
    worker: ClassVar[str] = "workers.app_job:AppRun"

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry

    def create(self, session: Session, settings: Mapping[str, Any], owner: str, body: Any) -> Job:
        if self.registry is None:
            raise LookupError("the app kind creates jobs from an app registry: AppKind(registry)")
        return create_job(session, settings, self.registry, owner, body)

    def view(self, job: Job, view: str | None = None) -> dict[str, Any]:
        return {"status": to_status, "summary": to_summary, "metadata": to_metadata}[view or "status"](job)


class TesKind:
    """A GA4GH TES task (POST /ga4gh/tes/v1/tasks): executors, inputs and outputs by URL."""

    name: ClassVar[str] = "tes"
    worker: ClassVar[str] = "workers.tes:TaskRun"

    def create(self, session: Session, settings: Mapping[str, Any], owner: str, body: Any) -> Job:
        return create_task(session, settings, owner, body)

    def view(self, job: Job, view: str | None = None) -> dict[str, Any]:
        return render(job, view or "BASIC")


#: Every kind, by the name its job rows carry.
KINDS: dict[str, type[AppKind] | type[TesKind]] = {AppKind.name: AppKind, TesKind.name: TesKind}


def worker_of(kind: str) -> str:
    """The import string of a kind's worker side."""
    try:
        return KINDS[kind].worker
    except KeyError:
        raise LookupError(f"unknown job kind {kind!r}; known: {sorted(KINDS)}") from None
