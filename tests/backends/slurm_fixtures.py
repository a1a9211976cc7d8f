"""Fixtures for the Slurm tests: the one-node cluster (scripts/slurm.sh, started here, never skipped), a second
slurmrestd in front of it that a test may stop, and an embedded stack whose worker serves the slurm backend in
each working-directory mode."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from caesar_rest import create_app
from caesar_rest.db import dispose_all

from ..support import RABBIT, REPO, Proc, embedded_settings, free_port, start_worker

SCRIPT = REPO / "scripts" / "slurm.sh"
SLURM_CLASS = "workers.backends.slurm:SlurmBackend"
SLURM_BACKENDS = ("slurm", "slurm_stage", "slurm_outage", "slurm_tight")
IMAGES = ("localhost/caesar-apps:latest", "localhost/busybox:latest")
# Polls that fail for longer than this end the job. A stopped slurmctld makes each poll wait for slurmrestd's
# own retries (9 to 18 s) before it fails: the timeout leaves room for one such poll after a restart.
UNREACHABLE_TIMEOUT = 20
# Test apps: argv of every option type (printf writes each argument NUL-terminated to stdout.log), and ln -s.
TEST_APPS = {
    "argv": {
        "name": "argv", "version": "1", "command": ["/usr/bin/printf", "%s\\0"], "backends": list(SLURM_BACKENDS),
        "default_backend": "slurm", "resources": {"cpus": 1, "memory_mb": 64, "time_limit": 120},
        "options": {
            "text": {"type": "string"},
            "equals": {"type": "string", "style": "equals", "flag": "--equals"},
            "last": {"type": "string", "style": "positional"},
            "choice": {"type": "enum", "allowed": ["plain", "a;b|c `id` $(id) 'q' \"dq\""]},
            "number": {"type": "int"},
            "ratio": {"type": "float"},
            "flag": {"type": "bool"},
            "inputfile": {"type": "file"},
        },
    },
    "linker": {     # leaves a symlink named `name` to `target` among its outputs
        "name": "linker", "version": "1", "command": ["/bin/ln", "-s"], "backends": list(SLURM_BACKENDS),
        "default_backend": "slurm", "resources": {"cpus": 1, "memory_mb": 64, "time_limit": 120},
        "options": {"target": {"type": "string", "style": "positional"},
                    "name": {"type": "string", "style": "positional"}},
    },
}


def slurm_script(command: str, env: Mapping[str, str] | None = None, timeout: float = 900,
                 args: tuple[str, ...] = ()) -> dict[str, str]:
    """Run scripts/slurm.sh; returns the KEY=VALUE lines it prints. A failure fails the test (no skip)."""
    done = subprocess.run(["bash", str(SCRIPT), command, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)
    if done.returncode != 0:
        pytest.fail(f"scripts/slurm.sh {command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


@pytest.fixture(scope="session")
def slurm_cluster() -> dict[str, str]:
    """The one-node cluster, installed (the first time) and started by the project's script. Left running for
    other test sessions; `scripts/slurm.sh stop` stops it."""
    return slurm_script("start")


@pytest.fixture(scope="session")
def slurm_podman(slurm_cluster: dict[str, str], podman_socket: str) -> dict[str, Any]:
    """The `container` setting of a slurm backend whose jobs run images: the job user's rootless Podman on the node,
    with the images scripts/podman.sh built copied into its store (scripts/slurm.sh images)."""
    found = slurm_script("images", args=IMAGES)
    return {"runtime": found["CAESAR_TEST_SLURM_PODMAN"], "storage": found["CAESAR_TEST_SLURM_PODMAN_STORAGE"],
            "storage_driver": "overlay", "runroot": found["CAESAR_TEST_SLURM_PODMAN_RUNROOT"],
            "conf": found["CAESAR_TEST_SLURM_PODMAN_CONF"]}


def slurm_options(cluster: Mapping[str, str], **extra: Any) -> dict[str, Any]:
    return {"url": cluster["CAESAR_TEST_SLURM_URL"], "api_version": cluster["CAESAR_TEST_SLURM_API_VERSION"],
            "jwt_key": cluster["CAESAR_TEST_SLURM_JWT_KEY"], "user": cluster["CAESAR_TEST_SLURM_USER"],
            "partition": cluster["CAESAR_TEST_SLURM_PARTITION"],
            # "nosuch" is allowed here so that Slurm, not the API, is the one to refuse it
            "allow": {"partition": [cluster["CAESAR_TEST_SLURM_PARTITION"], "nosuch"], "reservation": ["nosuch"],
                      "constraints": ["nosuch"], "account": ["nosuch", "caesar"]}, **extra}


def write_apps(dest: Path, backends: tuple[str, ...] = SLURM_BACKENDS) -> Path:
    """The shipped apps, allowed on every test slurm backend, sleeper with a 5 s and a 2 min limit, with more memory
    than the node has and with 128 MB, and TEST_APPS. Without their image: these run in place (a slurm backend
    without a container runtime refuses an app with an image; tests/backends/test_slurm_images.py runs them)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in (REPO / "config" / "apps").glob("*.yml"):
        app = yaml.safe_load(path.read_text())
        app.pop("image", None)
        app["backends"] = list(dict.fromkeys([*app.get("backends", []), *backends]))
        (dest / path.name).write_text(yaml.safe_dump(app))
        if app["name"] == "sleeper":
            short = {**app, "name": "sleeper_5s", "resources": {**app["resources"], "time_limit": 5}}
            (dest / "sleeper_5s.yml").write_text(yaml.safe_dump(short))
            greedy = {**app, "name": "sleeper_huge", "resources": {**app["resources"], "memory_mb": 10**8}}
            (dest / "sleeper_huge.yml").write_text(yaml.safe_dump(greedy))
            small = {**app, "name": "sleeper_128m", "resources": {**app["resources"], "memory_mb": 128}}
            (dest / "sleeper_128m.yml").write_text(yaml.safe_dump(small))
            two = {**app, "name": "sleeper_2m", "resources": {**app["resources"], "time_limit": 120}}
            (dest / "sleeper_2m.yml").write_text(yaml.safe_dump(two))
    for name, spec in TEST_APPS.items():    # options in argv order
        (dest / f"{name}.yml").write_text(yaml.safe_dump({**spec, "backends": list(backends)}, sort_keys=False))
    return dest


class SlurmStack:
    """An embedded caesar-rest (Flask test client in this process) and a real worker serving the slurm backends."""

    def __init__(self, cluster: dict[str, str], root: Path, extra_backends: Mapping[str, Any] | None = None,
                 extra_apps: Mapping[str, str] | None = None, **settings: Any) -> None:
        """extra_backends: more slurm backends by name (their options; the class is added); extra_apps: more apps
        (name: YAML); settings over the stack's own."""
        self.cluster = cluster
        self.root = root
        self.outage_port = free_port()
        scratch = root / "scratch"
        scratch.mkdir()
        backends = {
            "local": {},
            "slurm": slurm_options(cluster),
            "slurm_stage": slurm_options(cluster, workdir="stage", scratch=str(scratch), **{"class": SLURM_CLASS}),
            "slurm_outage": slurm_options(cluster, url=f"http://127.0.0.1:{self.outage_port}",
                                          **{"class": SLURM_CLASS}),
            # Slurm's time limit a minute below the app's, so that Slurm's TIMEOUT comes before the runner's own
            "slurm_tight": slurm_options(cluster, time_limit_margin=-60, **{"class": SLURM_CLASS}),
            **{name: {"class": SLURM_CLASS, **options} for name, options in (extra_backends or {}).items()},
        }
        self.slurm_backends = (*SLURM_BACKENDS, *(extra_backends or {}))
        apps = write_apps(root / "apps", self.slurm_backends)
        for name, text in (extra_apps or {}).items():
            (apps / f"{name}.yml").write_text(text)
        self.settings = embedded_settings(root / "var", APPS_DIR=str(apps),
                                          BACKENDS=backends, BROKER_URL=RABBIT,
                                          QUEUE_PREFIX=f"t{secrets.token_hex(4)}.", REMOTE_POLL_INTERVAL=0.5,
                                          REMOTE_UNREACHABLE_TIMEOUT=UNREACHABLE_TIMEOUT, **settings)
        self.app = create_app(self.settings)
        self.client = self.app.test_client()
        self.workers: list[Proc] = []
        self.start_worker()

    def start_worker(self, beat: bool = False) -> Proc:
        """One more worker process (of one pool process each: the tests count processes) on the same queues; beat:
        with the reaper."""
        worker = start_worker(self.settings, ["local", *self.slurm_backends],
                              self.root / f"worker{len(self.workers)}.log", concurrency=1, beat=beat)
        self.workers.append(worker)
        return worker

    def backend(self, name: str = "slurm") -> Any:
        """A backend instance in this process, to look at the cluster the way the worker does."""
        from workers.backends.slurm import SlurmBackend

        return SlurmBackend(self.app.config, self.app.config["BACKENDS"][name])

    def worker_logs(self) -> str:
        return "\n".join(w.log()[-3000:] for w in self.workers)

    def close(self) -> None:
        for worker in self.workers:
            # SIGTERM to the main process alone: it stops its pool itself (see htcondor_fixtures).
            worker.popen.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            worker.stop()
        dispose_all()


def shared_root(cluster: Mapping[str, str]) -> Path:
    """A test root inside the directory the cluster's job user can reach, so the job directories are shared with
    the node."""
    root = Path(tempfile.mkdtemp(prefix="caesar-test-", dir=cluster["CAESAR_TEST_SLURM_SHARED"]))
    root.chmod(0o755)       # the job user (caesarjob) must reach the job directories below
    return root


@pytest.fixture(scope="module")
def slurm_stack(slurm_cluster: dict[str, str]) -> Iterator[SlurmStack]:
    root = shared_root(slurm_cluster)
    stack = SlurmStack(slurm_cluster, root)
    try:
        yield stack
    finally:
        stack.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def outage_rest(slurm_stack: SlurmStack, slurm_cluster: dict[str, str]) -> Iterator[dict[str, str]]:
    """A second slurmrestd in front of the same cluster, on the slurm_outage backend's port: a test may stop it."""
    env = {"SLURM_REST_PORT": str(slurm_stack.outage_port)}
    slurm_script("start", env)
    try:
        yield env
    finally:
        slurm_script("stop-rest", env)
