"""Apps: the list, and each app's form generated from its YAML options; a posted form becomes a job through the
API's own validation, its errors shown beside the input they name."""
from __future__ import annotations

from flask import redirect, request, url_for
from sqlalchemy import select

from ..api.common import check_active_limit, publish_or_withdraw, registry, session, settings
from ..auth import current_owner
from ..errors import CaesarError, NotFound, status_of
from ..kinds import AppKind
from ..models import File
from . import blp, forms, page


def _app(name: str):
    app = registry().get(name)
    if app is None:
        raise NotFound(f"Unknown app {name!r}")
    return app


def _my_files() -> list[File]:
    with session() as s:
        rows = s.scalars(select(File).where(File.owner == current_owner()).order_by(File.created_at.desc())).all()
        s.expunge_all()
        return list(rows)


@blp.route("/apps")
def apps():
    return page("apps.html", apps=list(registry().apps.values()))


@blp.route("/apps/<name>", methods=["GET", "POST"])
def app_form(name: str):
    app = _app(name)
    values: dict = {}
    error: tuple[str, str] | None = None
    general: str | None = None
    if request.method == "POST":
        body, values = forms.job_request(app, request.form)
        try:
            job_id, backend = _create(body)
        except CaesarError as exc:
            named = exc.details.get("option") or exc.details.get("field")
            if isinstance(named, str) and (named in app.options or named in ("tag", "backend")):
                error = (named, exc.message)
            else:
                general = exc.message
            return page("app.html", status_of(type(exc))[0], app=app, groups=forms.groups(app, values, error),
                        files=_my_files(), values=values, error=error, general=general)
        publish_or_withdraw(job_id, backend)
        return redirect(url_for("ui.job", job_id=job_id), code=303)
    return page("app.html", app=app, groups=forms.groups(app), files=_my_files(), values=values, error=None,
                general=None)


def _create(body: dict) -> tuple[str, str]:
    """The job inserted as POST /job would (nothing is written when a check refuses it)."""
    owner = current_owner()
    with session() as s:
        check_active_limit(s, owner)
        job = AppKind(registry()).create(s, settings(), owner, body)
        return job.id, job.backend
