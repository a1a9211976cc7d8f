"""Fixtures of the fast layer. A unit test reaches no service and no network: every TCP/UDP connect is refused here
(loopback too, since that is where RabbitMQ, Redis and PostgreSQL listen) and so is every name lookup but
localhost's, so a test that would need one fails at once, naming what it tried, instead of passing only on machines
where the service happens to run.
Unix sockets stay allowed (nothing here needs them, but they are not the network). The guard covers Python's own
socket objects; a C library opening its own sockets (libpq) is not seen, so no unit test imports one."""
from __future__ import annotations

import ipaddress
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from caesar_rest import create_app
from caesar_rest.db import dispose_all

from ..support import embedded_settings

INET = (socket.AF_INET, socket.AF_INET6)
STANDINS = "tests.unit.standins"
#: The stand-in backends (tests/unit/standins.py) by the name jobs choose them by.
STANDIN_BACKENDS: dict[str, dict[str, Any]] = {
    "exit0": {"class": f"{STANDINS}:ExitZero"},
    "exit3": {"class": f"{STANDINS}:ExitThree"},
    "hang": {"class": f"{STANDINS}:StaysRunning"},
    "refuse": {"class": f"{STANDINS}:RefusesSubmit"},
    "flaky": {"class": f"{STANDINS}:FlakyPoll", "failures": 3},
    "remote": {"class": f"{STANDINS}:Remote"},
    "remote_flaky": {"class": f"{STANDINS}:RemoteFlaky", "failures": 2},
    "fetchfail": {"class": f"{STANDINS}:FetchFails", "fetch_failures": 1},
    "remote_fetchfail": {"class": f"{STANDINS}:RemoteFetchFails", "fetch_failures": 1},
    "remote_nofetch": {"class": f"{STANDINS}:RemoteFetchFails", "fetch_failures": 2},
    "slow": {"class": f"{STANDINS}:SlowSubmit", "seconds": 1.5},
    "oomonce": {"class": f"{STANDINS}:OomOnce"},
    "ownlimit": {"class": f"{STANDINS}:StopsAtItsLimit"},
}


class NetworkUsed(AssertionError):
    """A unit test tried to open a network connection or to look a name up."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every IP connect raises NetworkUsed; one that the code under test caught and swallowed (a broad `except
    Exception` around a publish, say) still fails the test when it ends. Yields the attempts (the guard's own test
    empties it)."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    attempts: list[str] = []

    def refuse(sock: socket.socket, address: Any) -> None:
        attempts.append(repr(address))
        raise NetworkUsed(f"a unit test connected to {address!r}; tests/unit must not use the network or a service "
                          "(put the test under tests/<feature>/ instead)")

    def connect(sock: socket.socket, address: Any) -> None:
        if sock.family in INET:
            refuse(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        if sock.family in INET:
            refuse(sock, address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        # A name lookup is network use too (DNS); addresses written out, localhost and AI_NUMERICHOST (which never
        # asks DNS: caesar_rest.egress spots literal addresses with it) resolve without it.
        name = host.decode() if isinstance(host, bytes) else host
        flags = kwargs.get("flags", args[4] if len(args) > 4 else 0)
        if name not in (None, "localhost") and not _literal_address(name) and not flags & socket.AI_NUMERICHOST:
            attempts.append(f"DNS {name!r}")
            raise NetworkUsed(f"a unit test looked up {name!r}; tests/unit must not use the network or a service")
        return real_getaddrinfo(host, *args, **kwargs)

    real_getaddrinfo = socket.getaddrinfo
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert not attempts, f"a unit test tried the network ({', '.join(attempts)}); tests/unit must not use it"


def _literal_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]").partition("%")[0])
    except ValueError:
        return False
    return True


# ---- the engine on stand-in backends ---------------------------------------------------------------------------------
STANDIN_APP = """
name: probe
version: "2.1"
description: An app for the stand-in backends; what it does is the backend's.
command: [probe-tool, --mode, fast]
backends: [exit0, exit3, hang, refuse, flaky, remote, remote_flaky, fetchfail, remote_fetchfail, remote_nofetch, slow]
default_backend: exit0
resources: {cpus: 2, memory_mb: 512, time_limit: 600}
outputs: [result.txt]
options:
  label: {type: string, default: plain}
"""

QUICK_LIMIT_APP = """
name: probe-limited
version: "1"
command: [probe-tool]
backends: [hang, remote]
default_backend: hang
resources: {time_limit: 1}
"""


RETRY_APP = """
name: probe-retry
version: "1"
command: [probe-tool]
backends: [hang, oomonce, exit3, exit0, remote, ownlimit]
default_backend: hang
resources: {time_limit: 1}
retries: {max: 2, on: [lost, oom, timed_out]}
"""


@pytest.fixture
def standin_settings(tmp_path: Path) -> dict[str, Any]:
    """The embedded default (SQLite, filesystem broker) with the stand-in backends and an APPS_DIR of two apps."""
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "probe.yml").write_text(textwrap.dedent(STANDIN_APP).lstrip())
    (apps / "probe-limited.yml").write_text(textwrap.dedent(QUICK_LIMIT_APP).lstrip())
    (apps / "probe-retry.yml").write_text(textwrap.dedent(RETRY_APP).lstrip())
    return embedded_settings(tmp_path / "var", APPS_DIR=str(apps), BACKENDS=dict(STANDIN_BACKENDS),
                             DEFAULT_BACKEND="exit0", JOB_POLL_INTERVAL=0.02, HEARTBEAT_INTERVAL=0.05)


def _forget_backend_instances() -> None:
    """The backend registry keeps one instance per (name, settings object) for the life of the process; each
    stand-in test starts from an empty one and leaves none behind (a registry keyed by id(settings) alone once
    handed a later mapping that got a freed one's id the earlier instance)."""
    import importlib

    for module in ("caesar_rest.backends", "workers.backends"):
        try:
            getattr(importlib.import_module(module), "_instances", {}).clear()
        except ImportError:
            pass


@pytest.fixture
def standin_app(standin_settings: dict[str, Any]) -> Iterator[Flask]:
    _forget_backend_instances()
    app = create_app(standin_settings)
    yield app
    dispose_all()
    _forget_backend_instances()


@pytest.fixture
def standin_client(standin_app: Flask):
    return standin_app.test_client()
