"""SSRF through TES inputs, against the real API and worker processes: an internal service listens on 127.0.0.1
(secret_server) while the stack's egress rules allow only 127.0.0.2/32, where the test's own HTTP and FTP peers
listen. The internal service must never be asked for anything: by a literal address (400 at submission), by a
redirect from an allowed server, or by a name that resolves to 127.0.0.1 (SYSTEM_ERROR naming URL and rule)."""
from __future__ import annotations

import threading
from urllib.parse import quote

import pytest

from ..support import embedded_settings, start_api
from .conftest import (
    PEER_HOST,
    SECRET,
    TOKENS,
    USERS,
    Tes,
    start_worker_with_hosts,
    tls_server,
    transfer_settings,
    unique,
)


def _system_logs(task) -> str:
    return "\n".join(task["logs"][0]["system_logs"])


def _fetch(url: str) -> dict:
    return {"inputs": [{"url": url, "path": "/data/in.txt"}],
            "executors": [{"image": "alpine", "command": ["cat", "/data/in.txt"]}]}


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "[::ffff:127.0.0.1]",
                                  "169.254.169.254", "10.1.2.3", "[::1]", "0.0.0.0"])
def test_a_literal_internal_address_is_a_400_at_submission(tes, secret_server, host):
    port, seen = secret_server
    before = len(seen)
    url = f"http://{host}:{port}/secret"
    r = tes.call("POST", "/tasks", json=_fetch(url))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["field"] == "inputs[0].url" and url in body["message"] and "EGRESS_ALLOWED_NETWORKS" in body["message"]
    assert len(seen) == before
    assert tes.call("POST", "/tasks", json={
        "outputs": [{"url": f"ftp://u:pw@127.0.0.1:{port}/x", "path": "/out/x"}],
        "executors": [{"image": "alpine", "command": ["true"]}]}).status_code == 400


def test_a_redirect_to_an_internal_address_or_another_scheme_is_a_system_error(tes, http_server, ftp_server,
                                                                              secret_server):
    """The first hop (127.0.0.2, allowed) answers 302; the worker checks the hop it is sent to like the first."""
    port, seen = secret_server
    before = len(seen)
    base, root = http_server
    secret = f"http://127.0.0.1:{port}/secret"
    url = f"{base}/redirect?to={quote(secret, safe='')}"
    task = tes.run(_fetch(url))
    assert task["state"] == "SYSTEM_ERROR", task
    logs = _system_logs(task)
    assert url in logs and "127.0.0.1" in logs and "loopback" in logs and "EGRESS_ALLOWED_NETWORKS" in logs
    assert task["logs"][0]["logs"] == [] and len(seen) == before

    ftp_host, ftp_root = ftp_server          # an allowed host, but a scheme a redirect may not switch to
    name = unique("redirected") + ".txt"
    (ftp_root / name).write_text("reached over ftp\n")
    url = f"{base}/redirect?to={quote(f'ftp://{ftp_host}/{name}', safe='')}"
    task = tes.run(_fetch(url))
    assert task["state"] == "SYSTEM_ERROR", task
    assert url in _system_logs(task) and "only http and https" in _system_logs(task)

    (root / "plain.txt").write_text("followed\n")          # a redirect that stays where it may is followed
    task = tes.run(_fetch(f"{base}/redirect?to={quote(f'{base}/plain.txt', safe='')}"))
    assert task["state"] == "COMPLETE" and task["logs"][0]["logs"][0]["stdout"] == "followed\n"


@pytest.fixture(scope="module")
def hosts_stack(tmp_path_factory, s3_server):
    """API + a worker whose /etc/hosts (in its own mount namespace) says internal.test is 127.0.0.1 and
    peer.test is 127.0.0.2: the answers a hostile DNS server could give for a name a user chose. An HTTPS
    server for peer.test (certificate for that name only, trusted by the worker through SSL_CERT_FILE) shows
    the checked connection still verifies the name although it connects to the address. Yields (client, the
    HTTPS server's directory and port)."""
    base = tmp_path_factory.mktemp("tes-hosts")
    (base / "files").mkdir()
    (base / "tls").mkdir()
    hosts = base / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 internal.test\n{PEER_HOST} peer.test\n")
    tls, cert = tls_server(base / "tls", "peer.test")
    threading.Thread(target=tls.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    settings = embedded_settings(base / "var", AUTH_MODE="token", AUTH_USERS=USERS, TES_TRANSFER_TIMEOUT=10,
                                 TES_HOST_RUNTIME=True, **transfer_settings(base / "files", s3_server[0]))
    worker = start_worker_with_hosts(settings, hosts, base / "worker.log", env={"SSL_CERT_FILE": str(cert)})
    try:
        api, url = start_api(settings, base / "api.log")
    except Exception:
        worker.stop()
        raise
    yield Tes(url, TOKENS["alice"]), (base / "tls", tls.server_address[1])
    api.stop()
    worker.stop()
    tls.shutdown()
    tls.server_close()


def test_a_name_that_resolves_to_loopback_is_a_system_error(hosts_stack, http_server, secret_server):
    """Resolution happens in the worker process, started under `unshare --mount` with a bind-mounted test
    /etc/hosts (tests/tes/hosts_namespace.py): internal.test -> 127.0.0.1, peer.test -> 127.0.0.2. The API takes
    the URL (a name is not refused before it is resolved); the worker resolves it, refuses the address, names it."""
    tes, (tls_dir, tls_port) = hosts_stack
    port, seen = secret_server
    before = len(seen)
    url = f"http://internal.test:{port}/secret"
    task = tes.run(_fetch(url))
    assert task["state"] == "SYSTEM_ERROR", task
    logs = _system_logs(task)
    assert url in logs and "internal.test resolves to 127.0.0.1" in logs and "loopback" in logs
    assert task["logs"][0]["logs"] == [] and len(seen) == before
    assert SECRET.decode() not in str(task)

    base, root = http_server                  # the same worker reaches a name that resolves where it may
    (root / "by-name.txt").write_text("by name\n")
    task = tes.run(_fetch(base.replace(PEER_HOST, "peer.test") + "/by-name.txt"))
    assert task["state"] == "COMPLETE", _system_logs(task)
    assert task["logs"][0]["logs"][0]["stdout"] == "by name\n"

    (tls_dir / "tls.txt").write_text("verified\n")       # TLS checks the name on the pinned connection ...
    task = tes.run(_fetch(f"https://peer.test:{tls_port}/tls.txt"))
    assert task["state"] == "COMPLETE", _system_logs(task)
    assert task["logs"][0]["logs"][0]["stdout"] == "verified\n"
    task = tes.run(_fetch(f"https://{PEER_HOST}:{tls_port}/tls.txt"))      # ... so the bare address fails it
    assert task["state"] == "SYSTEM_ERROR" and "CERTIFICATE_VERIFY_FAILED" in _system_logs(task)


def test_every_input_is_capped_and_no_fetch_waits_forever(tmp_path, http_server, ftp_server):
    """The worker's transfers in this process (workers.transfer.Transfers) against the real peers: an input over
    TES_MAX_INPUT_BYTES fails (an announced size at once, before its bytes are read; a directory counts all its
    files), and a server that accepts and never answers fails after TES_TRANSFER_TIMEOUT."""
    import socket
    import time

    from workers.transfer import TransferError, Transfers

    base, root = http_server
    ftp_host, ftp_root = ftp_server
    (root / "big.bin").write_bytes(b"x" * 5000)
    tree = unique("capped")
    (ftp_root / tree).mkdir()
    for name in ("a", "b", "c"):
        (ftp_root / tree / name).write_bytes(b"y" * 400)          # 1,200 bytes in all
    transfers = Transfers({"EGRESS_ALLOWED_NETWORKS": [f"{PEER_HOST}/32"], "TES_MAX_INPUT_BYTES": 1000,
                           "TES_TRANSFER_TIMEOUT": 1}, "alice")
    with pytest.raises(TransferError, match="larger than TES_MAX_INPUT_BYTES"):
        transfers.download(f"{base}/big.bin", tmp_path / "big.bin", "FILE")
    started = time.monotonic()
    with pytest.raises(TransferError, match="larger than TES_MAX_INPUT_BYTES"):
        transfers.download(f"{base}/slow/announced-a-megabyte", tmp_path / "slow.bin", "FILE")
    assert time.monotonic() - started < 5                       # the trickle would take a minute
    with pytest.raises(TransferError, match="larger than TES_MAX_INPUT_BYTES"):
        transfers.download(f"ftp://{ftp_host}/{tree}", tmp_path / "tree", "DIRECTORY")
    assert transfers.download(f"ftp://{ftp_host}/{tree}/a", tmp_path / "a", "FILE") == 400   # each input afresh

    silent = socket.create_server((PEER_HOST, 0))                # accepts (the kernel does), never answers
    try:
        started = time.monotonic()
        with pytest.raises(TransferError, match="no answer in 1 s"):
            transfers.download(f"http://{PEER_HOST}:{silent.getsockname()[1]}/x", tmp_path / "x", "FILE")
        assert time.monotonic() - started < 10
    finally:
        silent.close()
