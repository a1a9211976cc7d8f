"""The OGC `subscriber` of an execute request (the callback conformance class) on the service's one notification
outbox (caesar_rest/notify.py): successUri gets the results document when the job succeeds, inProgressUri its
statusInfo when it starts running, failedUri its statusInfo when it fails or is dismissed. Payloads are rendered
where the change happens (a worker too), from what the job row keeps of its execute request (extra.ogc: the outputs
asked, and the base URL and value cap of the API that took it)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from .. import notify
from ..models import Job
from .processes import outputs_of
from .status import job_files, requested, result_value, status_info

#: subscriber key -> (the notify events it is delivered on, the payload format)
TARGETS = {"successUri": (["succeeded"], "ogc-results"), "inProgressUri": (["started"], "ogc-status"),
           "failedUri": (["failed"], "ogc-status")}


def _ogc(job: Job) -> dict[str, Any]:
    return (job.extra or {}).get("ogc") or {}


def render_status(job: Job, _ev: notify.Event) -> dict[str, Any]:
    ogc = _ogc(job)
    return status_info(job, ogc.get("base", ""), ogc.get("root", ""))


def render_results(job: Job, _ev: notify.Event) -> dict[str, Any]:
    ogc = _ogc(job)
    known = outputs_of(list((job.spec or {}).get("outputs") or []))
    chosen, _mode = requested(job, known)
    files = job_files(job)              # at the end the directory is still on this worker's disk
    values = {ident: result_value(known[ident], job, how, ogc.get("base", ""), int(ogc.get("cap", 0)), files)
              for ident, how in chosen.items()}
    return {k: v for k, v in values.items() if v is not None}


notify.register_renderer("ogc-status", render_status, module=__name__)
notify.register_renderer("ogc-results", render_results, module=__name__)


def subscribe(session: Session, job: Job, subscriber: Mapping[str, str], settings: Mapping[str, Any]) -> None:
    """The subscriptions of one execute request, in the transaction that creates its job (a refused URL: a 400
    naming subscriber.<key>, and the job is rolled back)."""
    for key, url in subscriber.items():
        events, fmt = TARGETS[key]
        notify.subscribe(session, job, url, events, fmt, settings=settings, field=f"subscriber.{key}")
