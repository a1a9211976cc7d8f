"""Formats of the OGC surface: ?f=json|html first, else the Accept header (JSON unless HTML is preferred), and the
server-rendered HTML pages (Jinja templates in caesar_rest/templates/ogc, no script or style from elsewhere)."""
from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify, render_template, request

from ..errors import BadRequest
from . import PREFIX

FORMATS = ("json", "html")


def root() -> str:
    """The service's root URL: PUBLIC_URL, else as this request reached it (behind a proxy: its script root too)."""
    public = current_app.config.get("PUBLIC_URL")
    return public.rstrip("/") if public else request.url_root.rstrip("/")


def base() -> str:
    """The OGC surface's root URL."""
    return root() + PREFIX


def wants_html() -> bool:
    f = request.args.get("f")
    if f is not None:
        if f not in FORMATS:
            raise BadRequest(f"Query parameter 'f' must be json or html, not {f!r}", parameter="f")
        return f == "html"
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html" and request.accept_mimetypes["text/html"] > request.accept_mimetypes["application/json"]


def alternates(href: str, rel_self: str = "self") -> list[dict[str, str]]:
    """self (JSON) and alternate (HTML) links of a resource."""
    glue = "&" if "?" in href else "?"
    return [{"href": href, "rel": rel_self, "type": "application/json", "title": "this document"},
            {"href": f"{href}{glue}f=html", "rel": "alternate", "type": "text/html", "title": "this document as HTML"}]


def respond(doc: Any, template: str, status: int = 200, headers: dict[str, str] | None = None,
            **context: Any) -> Response:
    """doc as JSON, or the page `template` shows it in, as the request asks."""
    if wants_html():
        page = render_template(f"ogc/{template}.html", doc=doc, base=base(), **context)
        response = Response(page, status=status, mimetype="text/html")
    else:
        response = jsonify(doc)
        response.status_code = status
    response.headers["Vary"] = "Accept"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response
