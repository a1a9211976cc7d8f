"""Who is asking: the owner of every file and job a request touches."""
from __future__ import annotations

from flask import current_app


def current_owner() -> str:
    """With authentication off (the embedded default) every request belongs to DEFAULT_USER."""
    return current_app.config["DEFAULT_USER"]


def is_admin() -> bool:
    return False
