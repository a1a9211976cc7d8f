"""The container image allow-list (setting ALLOWED_IMAGES), shared by app jobs, TES executors and the workers.

A pattern is a shell-style glob (fnmatch, case-sensitive) matched against the image's full reference
``registry/path/name:tag`` or ``registry/path/name@sha256:...``; ``*`` matches any characters, ``/`` included.
Short names are completed the way Docker reads them before they are matched (``busybox`` is
``docker.io/library/busybox:latest``), so a short name cannot slip past a pattern written for its registry.
"""
from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

SETTING = "ALLOWED_IMAGES"


def full_reference(image: str) -> str:
    """The reference with its registry and tag made explicit (Docker's reading of a short name)."""
    name, at, digest = image.partition("@")
    first, slash, _rest = name.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        name = f"docker.io/{name}" if slash else f"docker.io/library/{name}"
    if not at and ":" not in name.rpartition("/")[2]:
        name += ":latest"
    return f"{name}{at}{digest}"


def patterns(settings: Mapping[str, Any]) -> list[str] | None:
    """The allowed patterns; None when every image is allowed (the setting is unset or empty)."""
    value = settings.get(SETTING)
    if not value:
        return None
    return [value] if isinstance(value, str) else [str(p) for p in value]


def refusal(settings: Mapping[str, Any], image: str) -> str | None:
    """Why image may not run here (a message naming it and the allowed patterns), or None when it may."""
    allowed = patterns(settings)
    if allowed is None:
        return None
    if not isinstance(image, str) or not image or any(c.isspace() or c == "\x00" for c in image):
        return f"{image!r} is not a container image reference"
    reference = full_reference(image)
    if any(fnmatchcase(reference, pattern) for pattern in allowed):
        return None
    shown = image if reference == image else f"{image} ({reference})"
    return f"image {shown} is not allowed on this server; {SETTING} allows: {', '.join(allowed)}"
