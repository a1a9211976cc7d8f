"""Stacks the security tests attack. Containers: real Podman, a real worker on the container pool, a low pids limit
(so a contained fork bomb is cheap on a 2-core machine) and an image allow-list. HTCondor: the personal pool and a
worker that holds a secret in its environment."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from caesar_rest import create_app
from caesar_rest.db import dispose_all

from ..support import Proc, embedded_settings, start_worker, write_apps as support_write_apps
from .container_fixtures import APPS_IMAGE, BUSYBOX
from .htcondor_fixtures import condor_options, write_apps as condor_write_apps

PIDS_LIMIT = 64
ALLOWED = ["localhost/busybox:*", "localhost/caesar-apps:*"]
OUTSIDE_IMAGE = "busybox:latest"          # a short name: docker.io/library/busybox:latest, outside the list

def _probe(name: str, description: str, extra: str = "") -> str:
    """A busybox `sh -c SCRIPT` app on the container backend; `extra` adds YAML lines (the operator's choices)."""
    return f"""
name: {name}
version: "1"
description: {description}
command: [sh, -c]
backends: [container]
default_backend: container
image: {BUSYBOX}
image_pull: never
resources: {{cpus: 0.5, memory_mb: 64, time_limit: 60}}
{extra}options:
  script: {{type: string, required: true, style: positional}}
"""


SECURITY_APPS: dict[str, str] = {
    # sh -c SCRIPT, as the default container user (1000)
    "probe": _probe("probe", "a busybox shell script that looks at its own powers"),
    # the operator runs this app as root (its YAML may; a request may not)
    "probe-root": _probe("probe-root", "the same, as root, which the operator chose in the app's YAML",
                         "backend_options: {container: {user: root}}\n"),
    "probe-net": _probe("probe-net", "an app the operator lets reach the network", "network: true\n"),
    # python3 -c SCRIPT in the caesar-apps image
    "py": f"""
name: py
version: "1"
description: a python script
command: [python3, -c]
backends: [container]
default_backend: container
image: {APPS_IMAGE}
image_pull: never
resources: {{cpus: 1, memory_mb: 256, time_limit: 90}}
options:
  script: {{type: string, required: true, style: positional}}
""",
    "elsewhere": f"""
name: elsewhere
version: "1"
description: an image outside ALLOWED_IMAGES
command: [sh, -c, "echo ran"]
backends: [container]
default_backend: container
image: {OUTSIDE_IMAGE}
image_pull: never
resources: {{cpus: 0.5, memory_mb: 64, time_limit: 60}}
options: {{}}
""",
}


@dataclass
class SecurityStack:
    settings: dict[str, Any]
    client: Any
    worker: Proc
    root: Path


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory, podman_socket, engine) -> Iterator[SecurityStack]:
    """API (Flask test client) + one real worker (2 processes) on the container pool, which also runs TES executors."""
    root = tmp_path_factory.mktemp("container-security")
    settings = embedded_settings(root / "var", APPS_DIR=str(support_write_apps(root / "apps", SECURITY_APPS)),
                                 ALLOWED_IMAGES=ALLOWED, TES_HOST_RUNTIME=False,
                                 BACKENDS={"local": {}, "container": {"base_url": f"unix://{podman_socket}",
                                                                      "pids_limit": PIDS_LIMIT}})
    app = create_app(settings)
    worker = start_worker(settings, ["container"], root / "worker.log", concurrency=2)
    try:
        yield SecurityStack(settings=settings, client=app.test_client(), worker=worker, root=root)
    finally:
        worker.stop()
        dispose_all()


# In the worker's environment as CAESAR_S3_SECRET_ACCESS_KEY (every setting reaches it as CAESAR_<NAME>).
WORKER_SECRET = f"s3cret-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def condor_secret_stack(tmp_path_factory, condor_pool) -> Iterator[SecurityStack]:
    """API (Flask test client) + a real worker on the condor pool (spool mode) whose environment holds a secret."""
    root = tmp_path_factory.mktemp("condor-security")
    settings = embedded_settings(root / "var", APPS_DIR=str(condor_write_apps(root / "apps")),
                                 S3_SECRET_ACCESS_KEY=WORKER_SECRET, REMOTE_POLL_INTERVAL=0.5,
                                 BACKENDS={"local": {}, "condor": condor_options(condor_pool)})
    app = create_app(settings)
    worker = start_worker(settings, ["condor"], root / "worker.log", concurrency=2)
    try:
        yield SecurityStack(settings=settings, client=app.test_client(), worker=worker, root=root)
    finally:
        worker.stop()
        dispose_all()
