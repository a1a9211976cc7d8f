"""Two real Galaxy Pulsar servers (scripts/pulsar.sh) and an embedded caesar-rest stack with a real Celery worker."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from caesar_rest import create_app
from caesar_rest.db import dispose_all

from ..support import RABBIT, REPO, Proc, embedded_settings, free_port, start_worker

SCRIPT = REPO / "scripts" / "pulsar.sh"
APP_BIN = str(Path(sys.executable).parent)       # caesar-sleeper, caesar-checksum, caesar-sfinder
# Polls that fail for longer than this end the job; a crashed server restarts well within it.
UNREACHABLE_TIMEOUT = 12


@dataclass
class PulsarServer:
    """One Pulsar server run by scripts/pulsar.sh; every method is a subcommand of the script."""

    name: str
    dir: Path
    port: int
    token: str
    slots: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _script(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, "PULSAR_PRIVATE_TOKEN": self.token, "PYTHON": sys.executable}   # makes its venv
        result = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if result.returncode != 0:
            log_file = self.dir / "pulsar.log"
            log = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""
            raise RuntimeError(f"pulsar.sh {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n"
                               f"{result.stderr[-3000:]}\n{log}")
        return result

    def start(self) -> None:
        """Idempotent; the first call on a fresh machine installs pulsar-app into its own venv."""
        self._script("start", str(self.dir), str(self.port), str(self.slots), timeout=900)

    def stop(self) -> None:
        self._script("stop", str(self.dir))

    def crash(self) -> None:
        self._script("crash", str(self.dir))

    def wipe(self) -> None:
        self._script("wipe", str(self.dir))

    def job_dir(self, pulsar_id: str) -> Path:
        return self.dir / "staging" / pulsar_id


@pytest.fixture(scope="session")
def pulsar_servers(tmp_path_factory) -> dict[str, PulsarServer]:
    """p1 (many slots, for the concurrency test) and p2, each with its own private token."""
    base = tmp_path_factory.mktemp("pulsar")
    servers = {name: PulsarServer(name, base / name, free_port(), secrets.token_hex(16), slots)
               for name, slots in (("p1", 32), ("p2", 8))}
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@dataclass
class PulsarStack:
    settings: dict[str, Any]
    client: Any
    worker: Proc
    servers: dict[str, PulsarServer]
    root: Path


def _apps_dir(dest: Path) -> Path:
    """The shipped apps, plus sleeper_p2 (its YAML sends it to Pulsar server p2) and sleeper_2s (time limit 2 s)."""
    dest.mkdir(parents=True)
    for path in (REPO / "config" / "apps").glob("*.yml"):
        shutil.copy(path, dest / path.name)
    sleeper = yaml.safe_load((REPO / "config" / "apps" / "sleeper.yml").read_text())
    sleeper.update(name="sleeper_p2", default_backend="pulsar", backend_options={"pulsar": {"server": "p2"}})
    (dest / "sleeper_p2.yml").write_text(yaml.safe_dump(sleeper))
    sleeper.update(name="sleeper_2s", backend_options={}, resources={"cpus": 1, "time_limit": 2})
    (dest / "sleeper_2s.yml").write_text(yaml.safe_dump(sleeper))
    return dest


@pytest.fixture(scope="module")
def pulsar_module_stack(pulsar_servers, tmp_path_factory):
    """Embedded caesar-rest (SQLite, file results) with local and pulsar backends, one worker of 2 processes.

    The broker is RabbitMQ, not kombu's filesystem:// transport: that one lets a consumer read a message file its
    publisher has created but not yet written (kombu 5.7 _put/_get), and the worker dies on the empty JSON. Remote
    jobs publish a poll task every REMOTE_POLL_INTERVAL, so this suite hit it within a minute."""
    tmp = tmp_path_factory.mktemp("pulsar-stack")
    servers = {name: {"url": s.url, "private_token": s.token, "app_path": APP_BIN}
               for name, s in pulsar_servers.items()}
    servers["bad"] = {"url": pulsar_servers["p1"].url, "private_token": "not-the-token", "app_path": APP_BIN}
    backends = {"local": {}, "pulsar": {"servers": servers, "default_server": "p1", "retries": 2, "backoff": 0.1}}
    settings = embedded_settings(tmp / "var", BACKENDS=backends, APPS_DIR=str(_apps_dir(tmp / "apps")),
                                 BROKER_URL=RABBIT, QUEUE_PREFIX=f"t{secrets.token_hex(4)}.",
                                 REMOTE_POLL_INTERVAL=0.5, REMOTE_UNREACHABLE_TIMEOUT=UNREACHABLE_TIMEOUT)
    app = create_app(settings)
    worker = start_worker(settings, ["pulsar", "local"], tmp / "worker.log", concurrency=2)
    try:
        yield PulsarStack(settings=settings, client=app.test_client(), worker=worker, servers=pulsar_servers,
                          root=tmp / "var")
    finally:
        worker.stop()
        dispose_all()


@pytest.fixture
def pulsar_stack(pulsar_module_stack):
    """The module's stack, with both Pulsar servers up (a test that crashed one may have failed half way)."""
    for server in pulsar_module_stack.servers.values():
        server.start()
    return pulsar_module_stack
