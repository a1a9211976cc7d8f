"""scripts/slurm.sh against states a machine may be left in, on the real cluster: a connection whose own end is
slurmrestd's port, and an slurmrestd whose pid file is gone. Each runs one more slurmrestd, on a port of its own,
in front of the session's cluster (as the outage tests do), so the cluster itself is never stopped."""
from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path

import requests

from ..support import free_port
from .slurm_fixtures import slurm_script

RESERVED = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")


def reserved_ports() -> set[int]:
    ports: set[int] = set()
    for part in filter(None, RESERVED.read_text().strip().split(",")):
        lo, _, hi = part.partition("-")
        ports.update(range(int(lo), int(hi or lo) + 1))
    return ports


def answers(url: str) -> bool:
    """slurmrestd is there: without a token it answers 401 (or a version error), never a refused connection."""
    try:
        return requests.get(f"{url}/openapi/v3", timeout=10).status_code in (200, 401, 404)
    except requests.ConnectionError:
        return False


def test_start_waits_for_a_connection_that_holds_slurmrestds_port_and_reserves_it(slurm_cluster):
    """In CI a client socket of the tests had been given 6820 as its own port (this machine's range for outgoing
    ports is 1024-65535), so slurmrestd's bind failed ('Address already in use') and start gave up: 46 errors. Now
    start reserves the daemons' ports out of that range and waits for such a socket to go before starting."""
    port = free_port()
    server = socket.create_server(("127.0.0.1", 0))
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.connect(server.getsockname())
    peer, _ = server.accept()

    def let_go() -> None:
        for sock in (holder, peer):      # a reset, not a close: no TIME-WAIT left holding the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        server.close()

    timer = threading.Timer(3.0, let_go)
    env = {"SLURM_REST_PORT": str(port)}
    began = time.monotonic()
    timer.start()
    try:
        found = slurm_script("start", env, timeout=300)
        took = time.monotonic() - began
        assert found["CAESAR_TEST_SLURM_URL"] == f"http://127.0.0.1:{port}"
        assert answers(found["CAESAR_TEST_SLURM_URL"])
        assert took >= 2.5, took             # it waited for the holder, then started
        assert {6817, 6818, 6820, port} <= reserved_ports()
    finally:
        timer.join()
        slurm_script("stop-rest", env)
    assert port not in reserved_ports() and {6817, 6818, 6820} <= reserved_ports()


def test_an_slurmrestd_that_lost_its_pid_file_is_taken_back(slurm_cluster):
    """A start killed between starting slurmrestd and writing its pid file left ours running unrecorded; the next
    start refused the port as taken by a stranger. Now it finds ours by its command line and records it."""
    port = free_port()
    env = {"SLURM_REST_PORT": str(port)}
    run = Path(slurm_cluster["SLURM_CONF"]).parent.parent / "run"
    try:
        slurm_script("start", env, timeout=300)
        pid_file = run / f"slurmrestd.{port}.pid"
        pid = int(pid_file.read_text())
        pid_file.unlink()
        again = slurm_script("start", env, timeout=300)
        assert int(pid_file.read_text()) == pid and os.path.exists(f"/proc/{pid}")
        assert answers(again["CAESAR_TEST_SLURM_URL"])
    finally:
        slurm_script("stop-rest", env)
    assert not os.path.exists(f"/proc/{pid}") or Path(f"/proc/{pid}/comm").read_text().strip() != "slurmrestd"
