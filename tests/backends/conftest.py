"""Fixtures of the backend tests against real peers (defined in the *_fixtures.py modules beside this file)."""
from __future__ import annotations

from .batch_fixtures import aws_setup, batch_stack, moto_server  # noqa: F401
from .container_fixtures import engine, podman_socket  # noqa: F401
from .htcondor_fixtures import condor_pool, condor_stack, outage_pool  # noqa: F401
from .security_fixtures import condor_secret_stack, secure_stack  # noqa: F401
