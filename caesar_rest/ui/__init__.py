"""The web dashboard at /ui/: server-rendered pages (Jinja2, templates/ui/) with a little of the package's own
JavaScript (static/ui/ui.js; no CDN, no inline script), signed in by a session cookie, every state-changing form
carrying the session's CSRF token. The pages call the same services as the API, so they show its messages."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, g, redirect, render_template, request, url_for

from ..errors import CaesarError, status_of
from . import session

blp = Blueprint("ui", __name__, url_prefix="/ui", static_folder="../static/ui", static_url_path="/static")

PREFIX = "/ui"
#: Pages anyone may open without signing in.
OPEN_ENDPOINTS = ("ui.login", "ui.static", "ui.oidc_start", "ui.oidc_callback")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class SignInRequired(Exception):
    """No session: the page sends the browser to the sign-in form."""


def page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(f"ui/{template}", user=g.get("caesar_user"), csrf=session.csrf_token(),
                           mode=_mode(), **context), status


def _mode() -> str:
    from flask import current_app
    return current_app.config["AUTH_MODE"]


@blp.before_request
def _authenticate():
    """The session's user becomes the request's user (caesar_rest.auth skips /ui/, which has no Authorization
    header to read); state-changing requests need the CSRF token."""
    if request.method not in SAFE_METHODS:
        session.check_csrf()
    user = session.user()
    if user is not None:
        g.caesar_user = user
    elif request.endpoint not in OPEN_ENDPOINTS:
        raise SignInRequired


@blp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
    return session.save(response)


@blp.errorhandler(SignInRequired)
def _sign_in(_exc):
    if request.method in SAFE_METHODS and request.accept_mimetypes.accept_html:
        return redirect(url_for("ui.login", next=request.full_path.rstrip("?")))
    return page("error.html", 401, message="Sign in first", code="unauthorized")


@blp.errorhandler(CaesarError)
def _error(exc: CaesarError):
    status, code = status_of(type(exc))
    if request.headers.get(session.CSRF_HEADER) or request.accept_mimetypes.best == "application/json":
        from flask import jsonify
        body = jsonify({"error": code, "message": exc.message, **exc.details})
        body.status_code = status
        return body
    return page("error.html", status, message=exc.message, code=code)


def register(app: Flask) -> None:
    from . import admin, apps, files, jobs, oidc, pages  # noqa: F401  (their routes join blp)

    oidc.check_settings(app.config)

    app.register_blueprint(blp)
