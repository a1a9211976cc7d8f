"""Client fixtures: the API and a local worker as real processes on the embedded default, with token auth (alice,
bob), and `caesar` run in-process (CliRunner's isolation around caesar_rest.client.cli.main, so the exit codes are
the console script's) against them."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner

from caesar_rest.auth import hash_token
from caesar_rest.client import Client
from caesar_rest.client.cli import main

from ..support import Proc, embedded_settings, start_api, start_worker, write_apps

TOKENS = {"alice": "c-alice-token", "bob": "c-bob-token"}
USERS = {name: {"tokens_sha256": [hash_token(token)]} for name, token in TOKENS.items()}
#: A sleeper that runs out of time (TIMED-OUT), for the exit codes.
NAPPER = """
name: napper
version: "1.0"
command: [caesar-sleeper]
backends: [local]
resources: {time_limit: 1}
options:
  seconds: {type: float, default: 30, min: 0}
"""
#: A command that is not there: the job cannot start (exit code 1 all the same, with or without an output to fetch).
BROKEN = """
name: broken
version: "1.0"
command: [caesar-no-such-program]
backends: [local]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("client")
    settings = embedded_settings(root / "var", AUTH_MODE="token", AUTH_USERS=USERS,
                                 APPS_DIR=str(write_apps(root / "apps", {"napper": NAPPER, "broken": BROKEN})))
    api, base = start_api(settings, root / "api.log")
    worker: Proc | None = None
    try:
        worker = start_worker(settings, ["local"], root / "worker.log", concurrency=2)
        yield {"base": base, "root": root, "api": api, "worker": worker}
    finally:
        if worker is not None:
            worker.stop()
        api.stop()


@pytest.fixture(autouse=True)
def _own_config_dir(tmp_path, monkeypatch) -> None:
    """The client keeps resumable uploads' URLs in the config directory: each test has its own."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
def client(stack) -> Iterator[Client]:
    with Client(stack["base"], token=TOKENS["alice"]) as c:
        yield c


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def caesar(stack, tmp_path, monkeypatch):
    """caesar(*args, token=alice's) -> Ran: the command as its console script runs it, config under tmp_path."""
    (tmp_path / "config").mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))

    def run(*args: str, token: str | None = TOKENS["alice"], url: str | None = stack["base"],
            input: str | None = None) -> Ran:
        env = {"CAESAR_URL": url, "CAESAR_TOKEN": token, "XDG_CONFIG_HOME": str(tmp_path / "config")}
        runner = CliRunner()
        with runner.isolation(input=input, env=env) as streams:
            code = main(list(args))
        return Ran(code, streams[0].getvalue().decode(), streams[1].getvalue().decode())

    return run
