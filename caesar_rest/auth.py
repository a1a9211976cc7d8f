"""Who is asking: authentication modes (none, token, basic, oidc), the owner of every record, admins, limits."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import current_app, g, request
from werkzeug.security import check_password_hash

from .errors import Unauthorized
from .storage import USER_RE

MODES = ("none", "token", "basic", "oidc")
# Paths anyone may read: liveness, metrics, the API description and its UI.
PUBLIC_PREFIXES = ("/health", "/metrics", "/openapi.json", "/swagger", "/static/", "/docs")
PUBLIC_SUFFIXES = ("/service-info",)
UI_PREFIX = "/ui"


@dataclass(frozen=True)
class User:
    name: str
    admin: bool = False


def hash_token(token: str) -> str:
    """How API tokens are kept in settings: their sha256, never the token itself."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def current_user() -> User:
    user = g.get("caesar_user")
    if user is None:      # outside a request the anonymous default applies
        return User(current_app.config["DEFAULT_USER"])
    return user


def current_owner() -> str:
    return current_user().name


def is_admin() -> bool:
    return current_user().admin


def owner_filter() -> str | None:
    """The owner to restrict queries to; None for admins, who see everything."""
    user = current_user()
    return None if user.admin else user.name


def user_setting(name: str, key: str, default: Any = None) -> Any:
    """A per-user setting from AUTH_USERS, else the global default."""
    users = current_app.config.get("AUTH_USERS") or {}
    return (users.get(name) or {}).get(key, default)


def _challenge(mode: str) -> Unauthorized:
    return Unauthorized("Authentication required: " + {
        "token": "send 'Authorization: Bearer <API token>'",
        "basic": "send HTTP Basic credentials (curl -u user:password)",
        "oidc": "send 'Authorization: Bearer <OIDC access token>'"}[mode],
        challenge='Basic realm="caesar-rest"' if mode == "basic" else 'Bearer realm="caesar-rest"')


def _config_user(name: str, entry: dict[str, Any]) -> User:
    return User(name=name, admin=bool(entry.get("admin", False)))


def _by_token(token: str) -> User | None:
    digest = hash_token(token)
    for name, entry in (current_app.config.get("AUTH_USERS") or {}).items():
        for known in entry.get("tokens_sha256") or []:
            if hmac.compare_digest(known, digest):
                return _config_user(name, entry)
    return None


def _by_password(header: str) -> User | None:
    try:
        decoded = base64.b64decode(header, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, password = decoded.partition(":")
    entry = (current_app.config.get("AUTH_USERS") or {}).get(name)
    if not sep or not entry or not entry.get("password_hash"):
        check_password_hash("scrypt:32768:8:1$x$" + "0" * 128, password)   # same cost for unknown users
        return None
    return _config_user(name, entry) if check_password_hash(entry["password_hash"], password) else None


class _Jwks:
    """The issuer's signing keys, fetched once and again when an unknown key id shows up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}

    def key_for(self, url: str, token: str):
        import jwt

        with self._lock:
            client = self._clients.get(url)
            if client is None:
                client = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)
                self._clients[url] = client
        return client.get_signing_key_from_jwt(token).key


_jwks = _Jwks()


def _by_oidc(token: str) -> User:
    import jwt

    cfg = current_app.config
    try:
        key = _jwks.key_for(cfg["OIDC_JWKS_URL"], token)
        claims = jwt.decode(token, key=key, algorithms=list(cfg["OIDC_ALGORITHMS"]), audience=cfg["OIDC_AUDIENCE"],
                            issuer=cfg["OIDC_ISSUER"], leeway=int(cfg["OIDC_LEEWAY"]),
                            options={"require": ["exp", "iss", "aud"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("The bearer token has expired") from None
    except jwt.InvalidAudienceError:
        raise Unauthorized("The bearer token is not meant for this service (audience)") from None
    except jwt.InvalidIssuerError:
        raise Unauthorized("The bearer token comes from an issuer this service does not trust") from None
    except jwt.PyJWKClientError:
        raise Unauthorized("The bearer token's signing key is unknown to the issuer") from None
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"The bearer token is invalid ({exc.__class__.__name__})") from None
    name = claims.get(cfg["OIDC_USERNAME_CLAIM"])
    if not isinstance(name, str) or not USER_RE.match(name):
        raise Unauthorized(f"The bearer token has no usable '{cfg['OIDC_USERNAME_CLAIM']}' claim")
    roles = claims.get(cfg["OIDC_ROLES_CLAIM"]) or []
    admin = cfg.get("OIDC_ADMIN_ROLE") in (roles if isinstance(roles, list) else [roles])
    return User(name=name, admin=bool(admin))


def authenticate() -> None:
    """before_request hook: sets g.caesar_user or answers 401."""
    mode = current_app.config["AUTH_MODE"]
    if mode == "none":
        g.caesar_user = User(current_app.config["DEFAULT_USER"], admin=True)
        return
    path = request.path
    if path == UI_PREFIX or path.startswith(UI_PREFIX + "/"):
        return      # the dashboard signs its users in with its session cookie (caesar_rest.ui.session)
    header = request.headers.get("Authorization", "")
    if request.method == "OPTIONS" or path.startswith(PUBLIC_PREFIXES) or path.endswith(PUBLIC_SUFFIXES):
        if header:      # anyone may read these; an admin's credentials show more (/health's error texts)
            try:
                user = _identify(mode, header)
            except Unauthorized:
                user = None
            if user is not None:
                g.caesar_user = user
            else:
                time.sleep(0.05)   # the same friction as below: a password guessed here shows as more detail
        return
    user = _identify(mode, header)
    if user is None:
        if header:
            time.sleep(0.05)   # a little friction against guessing
            raise Unauthorized("The credentials were not accepted")
        raise _challenge(mode)
    g.caesar_user = user


def _identify(mode: str, header: str) -> User | None:
    """The user an Authorization header names in this mode; None when it names none (an expired or foreign
    OIDC token is an Unauthorized that says why)."""
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    if mode == "basic" and scheme.lower() == "basic" and credentials:
        return _by_password(credentials)
    if mode == "token" and scheme.lower() == "bearer" and credentials:
        return _by_token(credentials)
    if mode == "oidc" and scheme.lower() == "bearer" and credentials:
        return _by_oidc(credentials)
    return None


def is_authenticated_admin() -> bool:
    """An admin who proved it: with AUTH_MODE none every caller is the anonymous admin, which does not count."""
    user = g.get("caesar_user")
    return current_app.config["AUTH_MODE"] != "none" and user is not None and user.admin


def _setting_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"))


def check_exposure(settings: Mapping[str, Any], served_by: str | None) -> None:
    """Refuse to start an anonymous service where others can reach it: under uWSGI/gunicorn, or bound to an address
    that is not loopback (served_by says which), AUTH_MODE none needs ALLOW_ANONYMOUS: true."""
    from .errors import CaesarError

    if (served_by is None or settings.get("AUTH_MODE", "none") != "none"
            or _setting_true(settings.get("ALLOW_ANONYMOUS"))):
        return
    raise CaesarError(
        f"caesar-rest refuses to start: AUTH_MODE is none (every caller would be the admin user "
        f"{settings.get('DEFAULT_USER', 'anonymous')!r}) and the API is {served_by}. Set AUTH_MODE to token, basic "
        "or oidc (with AUTH_USERS or OIDC_*), or set ALLOW_ANONYMOUS: true to serve without authentication on purpose.")


def check_settings(settings: Mapping[str, Any]) -> None:
    """Fail at start, not at the first request, when the auth settings cannot work."""
    from .errors import CaesarError

    mode = settings.get("AUTH_MODE", "none")
    if mode not in MODES:
        raise CaesarError(f"AUTH_MODE must be one of {MODES}, not {mode!r}")
    if mode == "oidc":
        missing = [k for k in ("OIDC_ISSUER", "OIDC_AUDIENCE", "OIDC_JWKS_URL") if not settings.get(k)]
        if missing:
            raise CaesarError(f"AUTH_MODE oidc needs {', '.join(missing)}")
        if any(a.lower() == "none" or a.upper().startswith("HS") for a in settings["OIDC_ALGORITHMS"]):
            raise CaesarError("OIDC_ALGORITHMS must be asymmetric (RS*, ES*, PS*, EdDSA); never 'none' or HS*")
    for name in settings.get("AUTH_USERS") or {}:
        if not USER_RE.match(name):
            raise CaesarError(f"AUTH_USERS: invalid user name {name!r}")
