"""The admin's view: every user's jobs and files, queue depth per pool, backend health, the job counters."""
from __future__ import annotations

from flask import request
from sqlalchemy import func, select

from .. import metrics
from ..api.common import celery, session, settings
from ..api.ops import run_checks
from ..auth import is_admin
from ..errors import NotFound
from ..models import File, Job
from . import blp, page


def _rows(checks: dict) -> dict:
    """/health's checks, one row each, each backend's its own ("backend local")."""
    rows: dict = {}
    for name, check in checks.items():
        if name == "backends" and isinstance(check, dict) and "status" not in check:
            rows.update({f"backend {b}": c for b, c in check.items()})
        else:
            rows[name] = check
    return rows


@blp.route("/admin")
def admin():
    if not is_admin():
        raise NotFound(f"No page {request.path}")
    cfg = settings()
    status, checks = run_checks(cfg, celery())
    try:
        queues = metrics.queue_depths(celery(), cfg)
        queue_error = None
    except Exception as exc:       # the broker's answer is what this shows; its absence is said, not hidden
        queues, queue_error = {}, f"{exc.__class__.__name__}: {exc}"
    with session() as s:
        by_state = s.execute(select(Job.owner, Job.state, func.count()).group_by(Job.owner, Job.state)).all()
        files = s.execute(select(File.owner, func.count(), func.coalesce(func.sum(File.size_bytes), 0))
                          .group_by(File.owner)).all()
    owners = sorted({o for o, _s, _n in by_state} | {o for o, _n, _b in files})
    states = sorted({st for _o, st, _n in by_state})
    table = {o: dict.fromkeys(states, 0) for o in owners}
    for o, st, n in by_state:
        table[o][st] = n
    totals = {st: sum(table[o][st] for o in owners) for st in states}
    return page("admin.html", health=status, checks=_rows(checks), queues=queues, queue_error=queue_error,
                owners=owners, states=states, table=table, totals=totals,
                files={o: (n, b) for o, n, b in files})
