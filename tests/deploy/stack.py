"""The production front for tests: a scratch redis-server, uWSGI serving caesar_rest.wsgi:app from the repo's
uwsgi.ini, and nginx with the repo's nginx/caesar-rest.conf rendered for this run's ports and paths."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from ..support import REPO, Proc, free_port, settings_env

UWSGI_BIN = Path(sys.executable).parent / "uwsgi"
GUNICORN_BIN = Path(sys.executable).parent / "gunicorn"
SEED_PORT = 8080        # the seed README's examples talk to localhost:8080


def port_free(port: int) -> bool:
    """Free on 127.0.0.1 and on ::1 (curl tries localhost's ::1 first)."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as s:
            try:
                s.bind((host, port))
            except OSError as exc:
                if family == socket.AF_INET6 and exc.errno == 99:   # no IPv6 loopback here
                    continue
                return False
    return True


def wait_port(port: int, timeout: float = 20, proc: Proc | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.log_path.name} exited:\n{proc.log()[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def ensure_nginx() -> str:
    """scripts/nginx.sh installs nginx when missing (a fresh machine gets it from `make test`)."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "nginx.sh")], capture_output=True, text=True, timeout=600,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/nginx.sh failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


class ScratchRedis:
    """A redis-server of our own on a free port, so a test may stop it without touching the shared one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = Proc([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--dir", str(self.workdir)], os.environ, self.workdir / "redis.log")
        wait_port(self.port, 20, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM)
            self.proc = None


class UWSGI:
    """uWSGI with the repository's uwsgi.ini; the socket, run dir and pool size come from CAESAR_WSGI_*."""

    def __init__(self, settings: dict, workdir: Path, processes: int = 2, threads: int = 2) -> None:
        self.rundir = workdir / "run"
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.rundir / "uwsgi.sock")
        self.processes = processes
        self.env = {**settings_env(settings), "CAESAR_WSGI_SOCKET": self.socket, "CAESAR_WSGI_RUNDIR": str(self.rundir),
                    "CAESAR_WSGI_PROCESSES": str(processes), "CAESAR_WSGI_THREADS": str(threads)}
        self.log_path = workdir / "uwsgi.log"
        self.proc: Proc | None = None

    def start(self) -> None:
        (self.rundir / "reload").touch()
        self.proc = Proc([str(UWSGI_BIN), "--ini", str(REPO / "uwsgi.ini")], self.env, self.log_path)
        self.wait_ready(0)

    def ready_count(self) -> int:
        return self.proc.log().count("WSGI app 0 (mountpoint='') ready")

    def wait_ready(self, already: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.ready_count() >= already + self.processes and os.path.exists(self.socket):
                return
            if self.proc.popen.poll() is not None:
                raise RuntimeError(f"uWSGI exited:\n{self.proc.log()[-4000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"uWSGI workers not ready in {timeout} s:\n{self.proc.log()[-4000:]}")

    def worker_pids(self) -> list[int]:
        """The master's children: the processes that run the app."""
        master = self.proc.pid
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return sorted(int(pid) for pid in children)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM, timeout=30)
            self.proc = None


NGINX_MAIN = """\
# The test's own nginx: root so its workers can read the data files (0440, owned by the test user);
# in production nginx's user joins the service's group instead (README, Production).
user root;
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/error.log info;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path {run}/client_body;
    uwsgi_temp_path {run}/uwsgi_temp;
    proxy_temp_path {run}/proxy_temp;
    fastcgi_temp_path {run}/fastcgi_temp;
    scgi_temp_path {run}/scgi_temp;
    include {run}/caesar-rest.conf;
}}
"""


def render_site(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    leftover = [line for line in template.splitlines() if "@" in line.split("#", 1)[0]]
    if leftover:
        raise AssertionError(f"unrendered tokens in nginx/caesar-rest.conf: {leftover}")
    return template


class Nginx:
    def __init__(self, binary: str, workdir: Path, port: int, uwsgi_socket: str, data_dir: str) -> None:
        self.binary = binary
        self.run = workdir / "nginx"
        self.run.mkdir(parents=True, exist_ok=True)
        self.port = port
        site = render_site((REPO / "nginx" / "caesar-rest.conf").read_text(), {
            "LISTEN": f"127.0.0.1:{port}", "SERVER_NAME": "localhost", "UWSGI": f"unix:{uwsgi_socket}",
            "DATA_DIR": data_dir, "STATIC_DIR": str(REPO / "caesar_rest" / "static"), "MAX_UPLOAD": "65g",
            "UWSGI_PARAMS": "/etc/nginx/uwsgi_params", "LOG_DIR": str(self.run)})
        (self.run / "caesar-rest.conf").write_text(site)
        (self.run / "nginx.conf").write_text(NGINX_MAIN.format(run=self.run))
        self.proc: Proc | None = None

    @property
    def base(self) -> str:
        return f"http://localhost:{self.port}"

    def start(self) -> None:
        conf = str(self.run / "nginx.conf")
        check = subprocess.run([self.binary, "-t", "-c", conf, "-e", str(self.run / "error.log")],
                               capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the rendered config:\n{check.stderr}")
        self.proc = Proc([self.binary, "-c", conf, "-e", str(self.run / "error.log"), "-g", "daemon off;"],
                         os.environ, self.run / "nginx.out")
        wait_port(self.port, 20, self.proc)

    def access_log(self) -> str:
        path = self.run / "caesar-rest.access.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGQUIT, timeout=20)
            self.proc = None


def wait_http(url: str, timeout: float = 30, status: int | None = None) -> requests.Response:
    deadline = time.time() + timeout
    last: object = None
    while time.time() < deadline:
        try:
            last = requests.get(url, timeout=10)
            if status is None or last.status_code == status:
                return last
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer {status or 'anything'} in {timeout} s; last: {last!r}")
