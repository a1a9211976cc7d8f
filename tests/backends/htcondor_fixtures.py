"""Fixtures for the HTCondor tests: the personal pool (scripts/htcondor.sh), a second pool to stop mid-job, and
an embedded stack whose worker serves the condor backend in each transfer mode."""
from __future__ import annotations

import os
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

from ..support import REPO, Proc, embedded_settings, free_port, start_worker

SCRIPT = REPO / "scripts" / "htcondor.sh"
HTCONDOR_CLASS = "workers.backends.htcondor:HTCondorBackend"
# The condor backends the test stack enables; every one but "condor" is an extra name for the same class.
CONDOR_BACKENDS = ("condor", "condor_files", "condor_shared", "condor_outage")
MISSING_APP = ("name: missing\nversion: '1'\ncommand: [/nonexistent/caesar-missing, --flag]\n"
               "backends: [condor]\ndefault_backend: condor\n")


def htcondor_script(command: str, env: Mapping[str, str] | None = None, timeout: float = 900) -> dict[str, str]:
    """Run scripts/htcondor.sh; returns the KEY=VALUE lines it prints. A failure fails the test (no skip)."""
    done = subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)
    if done.returncode != 0:
        pytest.fail(f"scripts/htcondor.sh {command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


@pytest.fixture(scope="session")
def condor_pool() -> dict[str, str]:
    """The personal pool, started (and the chroot built, the first time) by the project's script.
    It is left running for other test sessions; `scripts/htcondor.sh stop` stops it and unmounts."""
    return htcondor_script("start")


def condor_options(pool: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"collector": pool["CAESAR_TEST_CONDOR_COLLECTOR"], "token_dir": pool["CAESAR_TEST_CONDOR_TOKEN_DIR"],
            **extra}


def write_apps(dest: Path) -> Path:
    """The shipped apps, allowed on every test condor backend, plus an app whose executable is missing."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in (REPO / "config" / "apps").glob("*.yml"):
        app = yaml.safe_load(path.read_text())
        app["backends"] = list(dict.fromkeys([*app.get("backends", []), *CONDOR_BACKENDS]))
        (dest / path.name).write_text(yaml.safe_dump(app))
    (dest / "missing.yml").write_text(MISSING_APP)
    return dest


class CondorStack:
    """An embedded caesar-rest (Flask test client in this process) and a real worker serving the condor pools."""

    def __init__(self, pool: dict[str, str], root: Path) -> None:
        self.pool = pool
        self.root = root
        self.outage_port = free_port()
        owner = f"{pool['CAESAR_TEST_CONDOR_UID']}:{pool['CAESAR_TEST_CONDOR_UID']}"
        backends = {
            "local": {},
            "condor": condor_options(pool),                                       # spool: nothing shared
            "condor_files": condor_options(pool, transfer="files", workdir_owner=owner, **{"class": HTCONDOR_CLASS}),
            "condor_shared": condor_options(pool, transfer="shared", workdir_owner=owner,
                                            **{"class": HTCONDOR_CLASS}),
            "condor_outage": condor_options(pool, collector=f"127.0.0.1:{self.outage_port}",
                                            **{"class": HTCONDOR_CLASS}),
        }
        self.settings = embedded_settings(root / "var", APPS_DIR=str(write_apps(root / "apps")), BACKENDS=backends,
                                          REMOTE_POLL_INTERVAL=0.5, REMOTE_UNREACHABLE_TIMEOUT=4)
        self.app = create_app(self.settings)
        self.client = self.app.test_client()
        self.worker: Proc = start_worker(self.settings, ["local", *CONDOR_BACKENDS], root / "worker.log",
                                         concurrency=2)

    def backend(self, name: str = "condor") -> Any:
        """A backend instance in this process, to look into the pool (queue, history) the way the worker does."""
        from workers.backends.htcondor import HTCondorBackend

        return HTCondorBackend(self.app.config, self.app.config["BACKENDS"][name])

    def close(self) -> None:
        # SIGTERM to the main process alone: it stops its pool itself. A signal to the whole group can kill a
        # pool child holding the task queue's lock, and billiard's exit then waits on that lock forever.
        self.worker.popen.send_signal(signal.SIGTERM)
        try:
            self.worker.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.worker.stop()
        dispose_all()


@pytest.fixture(scope="module")
def condor_stack(condor_pool: dict[str, str]) -> Iterator[CondorStack]:
    # Inside the directory the pool sees at the same path, so the files and shared modes work too.
    root = Path(tempfile.mkdtemp(prefix="caesar-test-", dir=condor_pool["CAESAR_TEST_CONDOR_SHARED"]))
    root.chmod(0o755)       # the job user (tester) must reach the job directories below
    stack = CondorStack(condor_pool, root)
    try:
        yield stack
    finally:
        stack.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def outage_pool(condor_stack: CondorStack) -> Iterator[dict[str, str]]:
    """A second, throw-away pool (own queue and port, same chroot and token) that a test may stop."""
    port = str(condor_stack.outage_port)
    env = {"CONDOR_INSTANCE": f"outage{port}", "CONDOR_PORT": port}      # concurrent test sessions never share it
    pool = htcondor_script("start", env)
    try:
        yield {**pool, **env}
    finally:
        htcondor_script("stop", env, timeout=120)
