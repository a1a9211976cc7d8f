"""TES fixtures: real peers (HTTP server, FTP server, moto's S3 server), the API and a worker as real processes
on the embedded stack with token auth for three users, and clients whose every response is checked against the
TES v1.1 schemas (no field the spec does not define).

The HTTP and FTP servers listen on 127.0.0.2, the one network the stack's egress rules allow
(EGRESS_ALLOWED_NETWORKS, the operator's switch): 127.0.0.1 and the rest of loopback stay refused, as for a
real deployment. moto's bucket is opened to every user with its own keys (TES_S3_BUCKETS); file:// URLs reach
each user's own <files>/<user>/ (TES_FILE_ROOTS scope user)."""
from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs

import pytest
import requests

from caesar_rest.auth import hash_token

from ..support import Proc, embedded_settings, free_port, settings_env, start_api, start_worker
from . import schema

TOKENS = {"alice": "tes-alice-token", "bob": "tes-bob-token", "root": "tes-admin-token"}
USERS = {"alice": {"tokens_sha256": [hash_token(TOKENS["alice"])]},
         "bob": {"tokens_sha256": [hash_token(TOKENS["bob"])]},
         "root": {"tokens_sha256": [hash_token(TOKENS["root"])], "admin": True}}
TERMINAL = ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED")
FTP_USER, FTP_PASSWORD = "tes", "ftp-secret"
BUCKET = "tes-bucket"
MISSING_BUCKET = "no-such-bucket"          # opened by the settings, never created: a failure at transfer time
PEER_HOST = "127.0.0.2"                    # where the test's HTTP and FTP servers listen (allowed)


# ---- peers ------------------------------------------------------------------------------------------------------
class _QuietHandler(SimpleHTTPRequestHandler):
    """Files of a directory, plus /slow/* (a trickle, to cancel during staging), /short/* (promises more
    bytes than it sends, then hangs up) and /redirect?to=<url> (a 302 there)."""

    def log_message(self, *_args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/redirect?"):
            self.send_response(302)
            self.send_header("Location", parse_qs(self.path.split("?", 1)[1])["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith(("/slow/", "/short/")):
            self.send_response(200)
            self.send_header("Content-Length", str(10**6))
            self.end_headers()
            try:
                for _ in range(600 if self.path.startswith("/slow/") else 1):
                    self.wfile.write(b"x" * 100)
                    self.wfile.flush()
                    time.sleep(0.1 if self.path.startswith("/slow/") else 0)
            except OSError:
                pass
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="session")
def http_server(tmp_path_factory):
    """Python's http.server over a directory; yields (base URL, directory)."""
    root = tmp_path_factory.mktemp("http")
    server = ThreadingHTTPServer((PEER_HOST, 0), functools.partial(_QuietHandler, directory=str(root)))
    server.daemon_threads = True        # closing does not wait for a trickle nobody reads any more
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://{PEER_HOST}:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


class _SecretHandler(SimpleHTTPRequestHandler):
    """An internal service: answers every GET with SECRET and counts the requests it saw."""

    seen: ClassVar[list[str]] = []      # one list for every request's handler instance

    def log_message(self, *_args: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(SECRET)))
        self.end_headers()
        self.wfile.write(SECRET)


SECRET = b"internal-only: the metadata service's credentials\n"


@pytest.fixture(scope="session")
def secret_server():
    """What an SSRF is after: an HTTP service listening on 127.0.0.1 only (refused by the egress rules);
    yields (port, the paths it was asked for)."""
    handler = type("Secret", (_SecretHandler,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield server.server_address[1], handler.seen
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def ftp_server(tmp_path_factory):
    """pyftpdlib with one user (read/write) and anonymous read; yields (host:port, directory)."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import ThreadedFTPServer

    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    root = tmp_path_factory.mktemp("ftp")
    authorizer = DummyAuthorizer()
    authorizer.add_user(FTP_USER, FTP_PASSWORD, str(root), perm="elradfmwMT")
    authorizer.add_anonymous(str(root))
    handler = type("TesFtpHandler", (FTPHandler,), {"authorizer": authorizer, "banner": "caesar-rest test FTP"})
    server = ThreadedFTPServer((PEER_HOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.2}, daemon=True)
    thread.start()
    yield f"{PEER_HOST}:{server.address[1]}", root
    server.close_all()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free port, with one bucket; yields (endpoint URL, boto3 client)."""
    import boto3

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    with open(log, "ab") as out:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            requests.get(endpoint + "/moto-api/", timeout=1)
            break
        except requests.ConnectionError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"moto_server did not start:\n{log.read_text()}") from None
            time.sleep(0.2)
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- the service ------------------------------------------------------------------------------------------------
def transfer_settings(files: Path, s3_endpoint: str, **extra: Any) -> dict[str, Any]:
    """What an operator sets for the test's peers: file:// under <files>/<user>/ (and <files>-shared/, read-only),
    the peers' network allowed, moto's test bucket open to everyone with keys of its own (the service has none
    here: they never serve TES URLs anyway)."""
    s3_keys = {"access_key_id": "testing", "secret_access_key": "testing"}
    shared = files.with_name(files.name + "-shared")         # a read-only directory every user may read
    shared.mkdir(exist_ok=True)
    return {"TES_FILE_ROOTS": [{"path": str(files), "scope": "user"}, {"path": str(shared), "scope": "shared"}],
            "EGRESS_ALLOWED_NETWORKS": [f"{PEER_HOST}/32"], "S3_ENDPOINT_URL": s3_endpoint,
            "TES_S3_BUCKETS": [{"bucket": BUCKET, "users": "*", "access": "readwrite", "credentials": s3_keys},
                               {"bucket": MISSING_BUCKET, "users": "*", "access": "write", "credentials": s3_keys}],
            **extra}


@pytest.fixture(scope="session")
def tes_stack(tmp_path_factory, s3_server):
    """API + worker processes; yields (base URL, settings, the file:// root holding a directory per user)."""
    base = tmp_path_factory.mktemp("tes-stack")
    files = base / "files"          # what file:// URLs may reach (TES_FILE_ROOTS), <files>/<user>/ each
    files.mkdir()
    settings = embedded_settings(base / "var", AUTH_MODE="token", AUTH_USERS=USERS, TES_TRANSFER_TIMEOUT=10,
                                 HEARTBEAT_INTERVAL=1.0, TES_HOST_RUNTIME=True,
                                 **transfer_settings(files, s3_server[0]))
    worker = start_worker(settings, ["local"], base / "worker.log", concurrency=2)
    try:
        api, url = start_api(settings, base / "api.log")
    except Exception:
        worker.stop()
        raise
    yield url, settings, files
    api.stop()
    worker.stop()


def start_worker_with_hosts(settings: dict[str, Any], hosts: Path, log: Path,
                            env: dict[str, str] | None = None) -> Proc:
    """A local-backend worker in a mount namespace of its own where /etc/hosts is the file hosts
    (tests/tes/hosts_namespace.py; util-linux unshare, as root): its name lookups see the test's entries.
    env: more environment for it (SSL_CERT_FILE, say)."""
    cmd = ["unshare", "--mount", "--propagation", "private", "--", sys.executable,
           str(Path(__file__).with_name("hosts_namespace.py")), str(hosts),
           sys.executable, "-m", "celery", "-A", "workers.celery", "worker", "--loglevel", "INFO", "-Q",
           settings.get("QUEUE_PREFIX", "") + "local", "--concurrency", "1", "--without-gossip", "--without-mingle",
           "--hostname", f"hosts-{os.urandom(3).hex()}@%h"]
    proc = Proc(cmd, {**settings_env(settings), **(env or {})}, log)
    deadline = time.time() + 60
    while "ready." not in proc.log():
        if proc.popen.poll() is not None or time.time() > deadline:
            proc.stop()
            raise RuntimeError(f"worker with its own /etc/hosts did not start:\n{proc.log()}")
        time.sleep(0.2)
    return proc


def tls_server(directory: Path, name: str) -> tuple[ThreadingHTTPServer, Path]:
    """An HTTPS file server on PEER_HOST whose certificate names only `name` (self-signed with the cryptography
    package); returns (server, the certificate file for SSL_CERT_FILE). The caller serves and shuts it down."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory.with_suffix(".crt"), directory.with_suffix(".key")
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ThreadingHTTPServer((PEER_HOST, 0), functools.partial(_QuietHandler, directory=str(directory)))
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server, cert_file


class Tes:
    """Raw TES calls as one user; each 2xx answer is validated against the strict spec schema."""

    def __init__(self, base: str, token: str, prefix: str = "/ga4gh/tes/v1") -> None:
        self.base, self.prefix = base + prefix, prefix
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        response = requests.request(method, self.base + path, headers=headers, timeout=20, **kwargs)
        name = schema.schema_for(method, self.prefix + path)
        if response.ok and name:
            schema.validate(name, response.json(), (kwargs.get("params") or {}).get("view") or "MINIMAL")
        return response

    def create(self, task: dict[str, Any]) -> str:
        r = self.call("POST", "/tasks", json=task)
        assert r.status_code == 200, r.text
        return r.json()["id"]

    def get(self, task_id: str, view: str = "FULL") -> dict[str, Any]:
        r = self.call("GET", f"/tasks/{task_id}", params={"view": view})
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, task_id: str, states=TERMINAL, timeout: float = 60) -> dict[str, Any]:
        deadline = time.time() + timeout
        while True:
            task = self.get(task_id)
            if task["state"] in states:
                return task
            if time.time() > deadline:
                raise AssertionError(f"task {task_id} not in {states} after {timeout} s: {task}")
            time.sleep(0.1)

    def run(self, task: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        return self.wait(self.create(task), timeout=timeout)


@pytest.fixture(scope="session")
def tes(tes_stack):
    return Tes(tes_stack[0], TOKENS["alice"])


@pytest.fixture(scope="session")
def files(tes_stack) -> Path:
    """alice's own file:// directory (the tes fixture's user)."""
    mine = tes_stack[2] / "alice"
    mine.mkdir(exist_ok=True)
    return mine


@pytest.fixture
def checked_py_tes(monkeypatch):
    """py-tes's transport, with every successful answer validated against the spec first."""
    import tes.client

    original = tes.client.send_request

    def send_request(paths, method="get", kwargs_requests=None, **kwargs):
        response = original(paths, method=method, kwargs_requests=kwargs_requests, **kwargs)
        path, _, query = response.request.path_url.partition("?")
        name = schema.schema_for(method.upper(), path)
        assert name, response.request.path_url
        schema.validate(name, response.json(), parse_qs(query).get("view", ["MINIMAL"])[0])
        return response

    monkeypatch.setattr(tes.client, "send_request", send_request)


def make_client(tes_stack, user: str = "alice"):
    import tes as py_tes

    return py_tes.HTTPClient(tes_stack[0], token=TOKENS[user], timeout=20)


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(4).hex()}"
