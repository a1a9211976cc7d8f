"""Fixtures of the backend tests against real peers (defined in the *_fixtures.py modules beside this file)."""
from __future__ import annotations

from .container_fixtures import engine, podman_socket  # noqa: F401
from .security_fixtures import secure_stack  # noqa: F401
