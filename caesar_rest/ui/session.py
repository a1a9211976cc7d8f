"""The dashboard's session: a signed cookie (HttpOnly, SameSite=Strict, Secure behind TLS, path /ui/) holding the
signed-in user and the session's CSRF token; sign-in with the API's own credentials (token or Basic password).

The cookie names the credential it was opened with by a fingerprint (a token's sha256, a keyed hash of the stored
password hash), checked again on every request: a token removed from AUTH_USERS or a changed password ends the
sessions opened with it."""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Any

from flask import Response, current_app, g, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.security import check_password_hash

from ..auth import User, hash_token
from ..errors import Forbidden
from ..storage import USER_RE

COOKIE = "caesar_ui"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


def _secret() -> str:
    cfg = current_app.config
    if cfg.get("UI_SECRET_KEY"):
        return str(cfg["UI_SECRET_KEY"])
    cached = current_app.extensions.get("caesar_ui_secret")
    if cached:
        return cached
    path = Path(cfg["ROOT"]) / "ui-secret"
    try:                                   # the first process creates it; the others read it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
    except FileExistsError:
        pass
    key = path.read_text().strip()
    if not key:
        raise RuntimeError(f"{path} is empty: remove it, or set UI_SECRET_KEY")
    current_app.extensions["caesar_ui_secret"] = key
    return key


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_secret(), salt="caesar-ui-session")


def _password_fingerprint(password_hash: str) -> str:
    return hmac.new(_secret().encode(), password_hash.encode(), hashlib.sha256).hexdigest()[:32]


def load() -> dict[str, Any]:
    """The request's session (an empty one, with a fresh CSRF token, when it has none or a bad one)."""
    if "caesar_ui_session" in g:
        return g.caesar_ui_session
    data: dict[str, Any] = {}
    raw = request.cookies.get(COOKIE)
    if raw:
        try:
            data = _serializer().loads(raw, max_age=int(current_app.config["UI_SESSION_SECONDS"]))
        except BadSignature:
            data = {}
    if not isinstance(data, dict) or not isinstance(data.get("c"), str):
        data = {"c": secrets.token_urlsafe(32)}
        g.caesar_ui_dirty = True
    g.caesar_ui_session = data
    return data


def csrf_token() -> str:
    return load()["c"]


def check_csrf() -> None:
    """Every state-changing request of the dashboard carries the session's token (a form field, or the header
    for the page's own script): a 403 otherwise."""
    expected = csrf_token()
    given = request.headers.get(CSRF_HEADER) or request.args.get(CSRF_FIELD)
    if given is None and request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        given = request.form.get(CSRF_FIELD)
    if not given or not hmac.compare_digest(given, expected):
        raise Forbidden("The form was refused: its CSRF token is missing or stale. Reload the page and try again",
                        field=CSRF_FIELD)


def user() -> User | None:
    """The signed-in user, while the credential the session was opened with is still valid."""
    cfg = current_app.config
    if cfg["AUTH_MODE"] == "none":
        return User(cfg["DEFAULT_USER"], admin=True)
    data = load()
    name, fingerprint = data.get("u"), data.get("f")
    if not isinstance(name, str) or not isinstance(fingerprint, str):
        return None
    if cfg["AUTH_MODE"] == "oidc":     # as the issuer said at sign-in, for UI_SESSION_SECONDS (the cookie's age)
        return User(name=name, admin=data.get("a") is True) if fingerprint == "oidc" and USER_RE.match(name) else None
    entry = (cfg.get("AUTH_USERS") or {}).get(name)
    if not entry:
        return None
    if cfg["AUTH_MODE"] == "token":
        ok = any(hmac.compare_digest(fingerprint, known) for known in entry.get("tokens_sha256") or [])
    elif cfg["AUTH_MODE"] == "basic" and entry.get("password_hash"):
        ok = hmac.compare_digest(fingerprint, _password_fingerprint(entry["password_hash"]))
    else:
        ok = False
    return User(name=name, admin=bool(entry.get("admin", False))) if ok else None


def sign_in(name: str, secret: str) -> str | None:
    """Open a session for these credentials; None on success, else why not (the same words for an unknown user
    and a wrong secret)."""
    cfg = current_app.config
    mode = cfg["AUTH_MODE"]
    refused = "The user name and " + ("token" if mode == "token" else "password") + " were not accepted"
    entry = (cfg.get("AUTH_USERS") or {}).get(name) or {}
    fingerprint = None
    if mode == "token":
        digest = hash_token(secret)
        if any(hmac.compare_digest(digest, known) for known in entry.get("tokens_sha256") or []):
            fingerprint = digest
    elif mode == "basic":
        stored = entry.get("password_hash")
        if stored and check_password_hash(stored, secret):
            fingerprint = _password_fingerprint(stored)
        elif not stored:
            check_password_hash("scrypt:32768:8:1$x$" + "0" * 128, secret)   # same cost for unknown users
    else:
        return f"Sign-in with a form is not available in AUTH_MODE {mode}"
    if fingerprint is None:
        time.sleep(0.05)       # the API's friction against guessing (caesar_rest.auth.authenticate)
        return refused
    open_session(name, fingerprint)
    return None


def open_session(name: str, fingerprint: str, admin: bool = False) -> None:
    """The session of a user who just proved who they are, with a new CSRF token."""
    g.caesar_ui_session = {"c": secrets.token_urlsafe(32), "u": name, "f": fingerprint,
                           **({"a": True} if admin else {})}
    g.caesar_ui_dirty = True


def sign_out() -> None:
    g.caesar_ui_session = {"c": secrets.token_urlsafe(32)}
    g.caesar_ui_dirty = True


def save(response: Response) -> Response:
    """after_request: write the cookie when the session changed."""
    if g.get("caesar_ui_dirty"):
        behind_tls = request.is_secure or str(current_app.config.get("PUBLIC_URL") or "").startswith("https:")
        response.set_cookie(COOKIE, _serializer().dumps(g.caesar_ui_session), httponly=True, samesite="Strict",
                            secure=behind_tls, path="/ui/", max_age=int(current_app.config["UI_SESSION_SECONDS"]))
    return response
