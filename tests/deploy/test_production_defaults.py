"""Secure by default in production, against the real servers: uWSGI (the repository's uwsgi.ini), gunicorn
(gunicorn.conf.py) and `caesar-rest serve` on a non-loopback address refuse AUTH_MODE none unless ALLOW_ANONYMOUS
is true; the Host header is checked behind a real server; the systemd settings template authenticates."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from caesar_rest.auth import hash_token
from caesar_rest.config import load_settings

from ..support import API, REPO, Proc, embedded_settings, free_port, settings_env
from .stack import GUNICORN_BIN, UWSGI_BIN, wait_port

TOKEN = "deploy-test-token"
USERS = {"ops": {"tokens_sha256": [hash_token(TOKEN)], "admin": True}}


def _exited(proc: Proc, timeout: float = 90) -> int:
    """The server's exit code; fails when it is still running after timeout (it should have refused to start)."""
    try:
        return proc.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {timeout} s:\n{proc.log()[-3000:]}") from None


def _uwsgi(settings: dict, workdir: Path, port: int) -> Proc:
    # short socket paths
    rundir = Path(subprocess.check_output(["mktemp", "-d", "/tmp/cud-XXXXXX"], text=True).strip())
    env = {**settings_env(settings), "CAESAR_WSGI_SOCKET": str(rundir / "uwsgi.sock"),
           "CAESAR_WSGI_RUNDIR": str(rundir), "CAESAR_WSGI_PROCESSES": "1", "CAESAR_WSGI_THREADS": "2"}
    (rundir / "reload").touch()
    return Proc([str(UWSGI_BIN), "--ini", str(REPO / "uwsgi.ini"), "--http-socket", f"127.0.0.1:{port}"], env,
                workdir / "uwsgi.log")


def _gunicorn(settings: dict, workdir: Path, port: int) -> Proc:
    env = {**settings_env(settings), "CAESAR_WSGI_SOCKET": f"127.0.0.1:{port}", "CAESAR_WSGI_PROCESSES": "1",
           "CAESAR_WSGI_THREADS": "2"}
    return Proc([str(GUNICORN_BIN), "-c", str(REPO / "gunicorn.conf.py"), "caesar_rest.wsgi:app"], env,
                workdir / "gunicorn.log")


SERVERS = {"uwsgi": _uwsgi, "gunicorn": _gunicorn}


def _answering(base: str, proc: Proc, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            requests.get(f"{base}/health", timeout=5)
            return
        except requests.RequestException:      # the master listens before its worker has loaded the app
            assert proc.popen.poll() is None, proc.log()[-3000:]
            time.sleep(0.1)
    raise AssertionError(f"{base} does not answer:\n{proc.log()[-3000:]}")


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_production_server_refuses_to_serve_anonymously(server, tmp_path):
    """The old code served every caller as the admin user: the bench and the deployment tests ran that way."""
    proc = SERVERS[server](embedded_settings(tmp_path / "var"), tmp_path, free_port())
    try:
        code = _exited(proc)
    finally:
        proc.stop()
    log = proc.log()
    assert code != 0
    assert "refuses to start" in log and "AUTH_MODE" in log and "ALLOW_ANONYMOUS" in log, log[-3000:]
    assert f"served by {'uWSGI' if server == 'uwsgi' else 'gunicorn'}" in log


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_production_server_checks_the_host_and_serves_with_tokens(server, tmp_path):
    """Token authentication needs no ALLOW_ANONYMOUS; behind the real server, a Host outside ALLOWED_HOSTS (a DNS
    rebinding page, a forged name) is a 400 before authentication, the named host is served."""
    port = free_port()
    settings = embedded_settings(tmp_path / "var", AUTH_MODE="token", AUTH_USERS=USERS,
                                 ALLOWED_HOSTS=["api.example.org"])
    proc = SERVERS[server](settings, tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_port(port, 60, proc)
        _answering(base, proc)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        forged = requests.get(f"{base}{API}/jobs", headers={"Host": "rebind.evil.example", **auth}, timeout=10)
        assert forged.status_code == 400 and "ALLOWED_HOSTS" in forged.json()["message"], forged.text
        named = requests.get(f"{base}{API}/jobs", headers={"Host": "api.example.org", **auth}, timeout=10)
        assert named.status_code == 200, named.text
        anonymous = requests.get(f"{base}{API}/jobs", headers={"Host": "api.example.org"}, timeout=10)
        assert anonymous.status_code == 401
    finally:
        proc.stop()


def test_anonymous_production_server_when_allowed(tmp_path):
    port = free_port()
    proc = _gunicorn(embedded_settings(tmp_path / "var", ALLOW_ANONYMOUS=True), tmp_path, port)
    try:
        wait_port(port, 60, proc)
        _answering(f"http://127.0.0.1:{port}", proc)
        assert requests.get(f"http://127.0.0.1:{port}{API}/jobs", timeout=10).status_code == 200
    finally:
        proc.stop()


def test_serve_on_a_public_address_refuses_anonymous(tmp_path):
    """`caesar-rest serve --host 0.0.0.0` (every interface) with AUTH_MODE none: refused before it binds."""
    env = settings_env(embedded_settings(tmp_path / "var"))
    done = subprocess.run([sys.executable, "-m", "caesar_rest.cli", "serve", "--host", "0.0.0.0", "--port",
                           str(free_port())], env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "bound to 0.0.0.0" in done.stderr and "ALLOW_ANONYMOUS" in done.stderr and "AUTH_MODE" in done.stderr


def test_systemd_settings_template_authenticates():
    """scripts/systemd/settings.yml: token authentication, so the service it configures starts under uWSGI."""
    path = REPO / "scripts" / "systemd" / "settings.yml"
    raw = yaml.safe_load(path.read_text())
    settings = load_settings(environ={"CAESAR_CONFIG": str(path)})
    assert raw.get("AUTH_MODE") == "token" and settings["AUTH_MODE"] == "token"
    from caesar_rest.auth import check_exposure, check_settings
    assert not settings.get("ALLOW_ANONYMOUS")
    check_settings(settings)
    check_exposure(settings, "served by uWSGI")          # no refusal
    for entry in settings["AUTH_USERS"].values():
        assert all(isinstance(digest, str) for digest in entry["tokens_sha256"])
