"""Sign-in, sign-out and the dashboard's front door."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, redirect, request, url_for

from . import blp, page, session


def _safe_next(target: str | None) -> str:
    """Only a path of the dashboard itself (never another site, never //host)."""
    if not target:
        return url_for("ui.jobs")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/") or target.startswith("//"):
        return url_for("ui.jobs")
    return target


@blp.route("/")
def home():
    return redirect(url_for("ui.jobs"))


@blp.route("/login", methods=["GET", "POST"])
def login():
    mode = current_app.config["AUTH_MODE"]
    target = _safe_next(request.values.get("next"))
    if mode == "none":
        return redirect(target)
    error = None
    name = ""
    if request.method == "POST" and mode != "oidc":
        name = request.form.get("user", "").strip()
        error = session.sign_in(name, request.form.get("secret", ""))
        if error is None:
            return redirect(target, code=303)
    from .oidc import configured

    return page("login.html", 401 if error else 200, error=error, name=name, next=target,
                oidc=configured(current_app.config))


@blp.route("/logout", methods=["POST"])
def logout():
    session.sign_out()
    return redirect(url_for("ui.login"), code=303)
