"""Requests from browsers: the Host header against ALLOWED_HOSTS (DNS rebinding), cross-site state-changing requests
refused (403) unless their origin is in TRUSTED_ORIGINS, and CORS answers for those trusted origins only.

A web page a user visits can make the user's browser send requests here: "simple" ones (a form POST, a fetch with
a text/plain or typeless body, an <img> GET) go out without a CORS preflight, carrying whatever the browser holds
for this service (HTTP Basic credentials, the reachability of a service on 127.0.0.1). Browsers say where such a
request comes from in `Origin` (every non-GET request) and `Sec-Fetch-Site`; clients that are not browsers (curl,
the TES clients) send neither and are not affected. JSON endpoints also insist on application/json
(caesar_rest.api.common.json_body), which no simple request can carry."""
from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, request

from .errors import BadRequest, Forbidden

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# Endpoints that change state even on GET (the original caesar-rest API cancels with GET /job/<id>/cancel).
STATE_CHANGING_GETS = ("jobs.cancel",)
# What a browser page of a trusted origin may send and read (CORS).
CORS_METHODS = "GET, HEAD, POST, DELETE"
CORS_HEADERS = "Authorization, Content-Type, X-Request-ID"
CORS_EXPOSE = "X-Request-ID, Location, Content-Disposition"
CORS_MAX_AGE = "600"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def split_host(value: str) -> tuple[str, str | None]:
    """(host name lower-cased without a trailing dot, port or None) of a Host header or an origin's netloc."""
    value = value.strip().lower()
    if value.startswith("["):                       # [v6]:port
        host, _, rest = value.partition("]")
        return host + "]", rest[1:] if rest.startswith(":") and rest[1:] else None
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and host:
        return host.rstrip("."), port
    return value.rstrip("."), None


def host_allowed(host_header: str, allowed: Collection[str]) -> bool:
    name, _port = split_host(host_header)
    if not name:
        return False
    for raw in allowed:
        entry = raw.strip().lower().rstrip(".")
        if entry == "*" or entry == name or (entry.startswith(".") and (name == entry[1:] or name.endswith(entry))):
            return True
    return False


def _same_host(origin: str, host_header: str) -> bool:
    """The origin names this service: same host name, and the same port when both say one (nginx's $host drops
    the port, so a missing one is not a mismatch)."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    o_name, o_port = split_host(parts.netloc)
    h_name, h_port = split_host(host_header)
    return o_name == h_name and (o_port is None or h_port is None or o_port == h_port)


def _trusted(settings: Mapping[str, Any]) -> set[str]:
    origins = settings.get("TRUSTED_ORIGINS") or []
    return {o.rstrip("/").lower() for o in ([origins] if isinstance(origins, str) else origins)}


def _cross_site(trusted: set[str]) -> str | None:
    """What makes this request cross-site (for the error message), or None when it is not."""
    origin = request.headers.get("Origin")
    if origin is not None:
        if origin.rstrip("/").lower() in trusted or (origin != "null" and _same_host(origin, request.host)):
            return None
        return f"Origin {origin}"
    site = request.headers.get("Sec-Fetch-Site")
    if site is None or site in ("same-origin", "none"):
        return None
    return f"Sec-Fetch-Site {site} (no Origin)"


def check_request() -> Response | None:
    """before_request, ahead of authentication: the Host header, cross-site requests, CORS preflights."""
    cfg = current_app.config
    allowed = cfg.get("ALLOWED_HOSTS")
    if allowed:
        allowed = [allowed] if isinstance(allowed, str) else allowed
        if not host_allowed(request.host, allowed):
            raise BadRequest(f"This service does not answer for the host {request.host!r} (ALLOWED_HOSTS)",
                             field="Host")
    trusted = _trusted(cfg)
    origin = request.headers.get("Origin")
    if request.method == "OPTIONS" and origin and request.headers.get("Access-Control-Request-Method"):
        if origin.rstrip("/").lower() in trusted:
            return _preflight(origin)
        return None                               # no CORS headers: the browser refuses the real request
    if request.method not in SAFE_METHODS or request.endpoint in STATE_CHANGING_GETS:
        why = _cross_site(trusted)
        if why is not None:
            raise Forbidden(f"Cross-site request refused: {why} is not this service's own origin. Call the API "
                            "from its own pages or a non-browser client, or have the operator list the origin in "
                            "TRUSTED_ORIGINS", origin=origin)
    return None


def _preflight(origin: str) -> Response:
    response = Response(status=204)
    response.headers.update({"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": CORS_METHODS,
                             "Access-Control-Allow-Headers": CORS_HEADERS, "Access-Control-Max-Age": CORS_MAX_AGE})
    response.vary.add("Origin")
    return response


def add_cors(response: Response) -> Response:
    """after_request: a trusted origin may read the answer (no credentials mode: bearer tokens go in Authorization,
    which a page sets itself; cookies and cached Basic credentials are never honoured cross-origin)."""
    trusted = _trusted(current_app.config)
    if not trusted:
        return response
    response.vary.add("Origin")
    origin = request.headers.get("Origin")
    if origin and origin.rstrip("/").lower() in trusted and "Access-Control-Allow-Origin" not in response.headers:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE
    return response


def init_app(app: Flask) -> None:
    """Called by create_app before the authentication hook is registered, so refusals come first."""
    app.before_request(check_request)
    app.after_request(add_cors)
