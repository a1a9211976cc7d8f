"""Real Podman (scripts/podman.sh: Docker-compatible API, busybox and caesar-apps images) and an embedded
caesar-rest stack whose real Celery worker runs the container backend against it."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from caesar_rest import create_app
from caesar_rest.db import dispose_all

from ..support import REPO, Proc, embedded_settings, start_worker, write_apps as support_write_apps

SCRIPT = REPO / "scripts" / "podman.sh"
BUSYBOX = "localhost/busybox:latest"
APPS_IMAGE = "localhost/caesar-apps:latest"
MISSING_IMAGE = "localhost/caesar-no-such-image:latest"

# Test apps beside the shipped ones (sfinder is compared between the local and the container backend).
TEST_APPS: dict[str, str] = {
    # argv: sh -c SCRIPT [inputs/FILE]: the script sees the staged input as $0
    "bb": f"""
name: bb
version: "1"
description: a busybox shell script
command: [sh, -c]
backends: [container, local]
default_backend: container
image: {BUSYBOX}
image_pull: never
resources: {{cpus: 0.5, memory_mb: 64, time_limit: 120}}
options:
  script: {{type: string, required: true, style: positional}}
  inputfile: {{type: file, style: positional}}
""",
    "bb-short": f"""
name: bb-short
version: "1"
description: a busybox shell script with a 2 s time limit
command: [sh, -c]
backends: [container]
default_backend: container
image: {BUSYBOX}
image_pull: never
resources: {{cpus: 0.5, memory_mb: 64, time_limit: 2}}
options:
  script: {{type: string, required: true, style: positional}}
""",
    "bb-missing": f"""
name: bb-missing
version: "1"
description: "an image that exists nowhere; image_pull if-missing, so the pull fails"
command: [sh, -c, "echo never"]
backends: [container]
default_backend: container
image: {MISSING_IMAGE}
resources: {{cpus: 0.5, memory_mb: 64, time_limit: 60}}
options: {{}}
""",
    "hog": f"""
name: hog
version: "1"
description: allocates far more than its 96 MB memory limit
command: [caesar-sleeper, --seconds, "0", --allocate-mb, "400"]
backends: [container]
default_backend: container
image: {APPS_IMAGE}
image_pull: never
resources: {{cpus: 1, memory_mb: 96, time_limit: 120}}
options: {{}}
""",
}


def write_apps(directory: Path) -> Path:
    return support_write_apps(directory, TEST_APPS)


@pytest.fixture(scope="session")
def podman_socket() -> str:
    """The socket of the Podman service; on a fresh machine the script installs Podman and builds the images."""
    try:
        result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1500, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/podman.sh did not finish in {exc.timeout} s:\n{exc.stderr}")
    if result.returncode != 0:
        pytest.fail(f"scripts/podman.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-4000:]}")
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def engine(podman_socket) -> Iterator[docker.APIClient]:
    api = docker.APIClient(base_url=f"unix://{podman_socket}", version="1.41", timeout=60)
    for image in (BUSYBOX, APPS_IMAGE):
        api.inspect_image(image)            # built by the script, or the run fails here
    yield api
    api.close()


@dataclass
class ContainerStack:
    settings: dict[str, Any]
    client: Any
    worker: Proc
    root: Path
    jobs_dir: Path          # the job directories of the default user

    def workdir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id


def make_stack(root: Path, base_url: str, queues: list[str]) -> ContainerStack:
    settings = embedded_settings(root / "var", APPS_DIR=str(write_apps(root / "apps")),
                                 BACKENDS={"local": {}, "container": {"base_url": base_url}})
    app = create_app(settings)
    worker = start_worker(settings, queues, root / "worker.log", concurrency=2)
    return ContainerStack(settings=settings, client=app.test_client(), worker=worker, root=root,
                          jobs_dir=Path(app.config["JOBS_DIR"]) / app.config["DEFAULT_USER"])


@pytest.fixture(scope="module")
def container_stack(tmp_path_factory, podman_socket, engine) -> Iterator[ContainerStack]:
    """API (Flask test client) + one real worker (2 processes) on the local and container pools."""
    s = make_stack(tmp_path_factory.mktemp("container"), f"unix://{podman_socket}", ["local", "container"])
    try:
        yield s
    finally:
        s.worker.stop()
        dispose_all()
