"""The fast layer's own guard (tests/unit/conftest.py): a unit test that connects anywhere over IP fails."""
from __future__ import annotations

import socket

import pytest


@pytest.mark.parametrize("family, address", [(socket.AF_INET, ("127.0.0.1", 5672)),
                                             (socket.AF_INET6, ("::1", 6379)),
                                             (socket.AF_INET, ("192.0.2.1", 80))])
def test_an_ip_connection_fails_the_test(no_network, family, address):
    for method in ("connect", "connect_ex"):
        with socket.socket(family, socket.SOCK_STREAM) as sock, \
                pytest.raises(AssertionError, match="must not use the network"):
            getattr(sock, method)(address)
    assert no_network == [repr(address)] * 2
    no_network.clear()          # seen: this test wanted them refused


def test_create_connection_and_http_clients_are_refused_too(no_network):
    import requests

    with pytest.raises(AssertionError, match="must not use the network"):
        socket.create_connection(("127.0.0.1", 5432), timeout=1)
    with pytest.raises((AssertionError, requests.ConnectionError)) as caught:
        requests.get("http://127.0.0.1:9/", timeout=1)
    assert "must not use the network" in str(caught.value)
    assert len(no_network) == 2
    no_network.clear()


def test_a_swallowed_attempt_still_fails_the_test(no_network):
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1)
    except Exception:
        pass                    # as code under test might
    assert no_network == [repr(("127.0.0.1", 5672))]       # the fixture fails the test at teardown for this
    no_network.clear()


def test_a_name_lookup_fails_the_test_but_addresses_and_localhost_resolve(no_network):
    with pytest.raises(AssertionError, match=r"looked up 'example\.org'"):
        socket.getaddrinfo("example.org", 80)
    assert no_network == ["DNS 'example.org'"]
    no_network.clear()
    assert socket.getaddrinfo("127.0.0.1", 80) and socket.getaddrinfo("::1", 80) and socket.getaddrinfo("localhost", 80)
    with pytest.raises(socket.gaierror):            # a numeric-only lookup of a name never asks DNS
        socket.getaddrinfo("example.org", None, flags=socket.AI_NUMERICHOST)
    assert no_network == []


def test_unix_sockets_still_work():
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        left.sendall(b"ping")
        assert right.recv(4) == b"ping"
