"""`caesar-rest` command: run the embedded service (API + worker), serve the API, migrate, show settings."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from .config import SettingsError, load_settings, queue_name, redacted, setting_doc


def _worker_cmd(settings: Mapping[str, Any], queues: list[str], concurrency: int, beat: bool) -> list[str]:
    cmd = [sys.executable, "-m", "celery", "-A", "workers.celery", "worker", "--loglevel", "INFO",
           "-Q", ",".join(queue_name(settings, q) for q in queues), "--concurrency", str(concurrency),
           "--hostname", f"caesar-{'-'.join(queues)}@%h", "--without-gossip", "--without-mingle"]
    if beat:
        cmd += ["--beat", "--schedule", os.path.join(settings["ROOT"], "celerybeat-schedule")]
    return cmd


def is_loopback(host: str) -> bool:
    """host (an address or a name) reaches this machine only: every address it resolves to is loopback."""
    import ipaddress
    import socket

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def serve(settings_overrides: dict, host: str, port: int) -> None:
    """The API on a threaded WSGI server (use uWSGI or gunicorn in production). On loopback it is the
    developer's own (anonymous allowed, and only loopback names accepted in Host, against DNS rebinding); on any
    other address it serves others, and AUTH_MODE none is refused unless ALLOW_ANONYMOUS is true."""
    from werkzeug.serving import run_simple

    from . import create_app
    from .guard import LOOPBACK_HOSTS

    overrides = dict(settings_overrides)
    loopback = is_loopback(host)
    if loopback and load_settings(overrides).get("ALLOWED_HOSTS") is None:
        overrides["ALLOWED_HOSTS"] = sorted({*LOOPBACK_HOSTS, host if ":" not in host else f"[{host.strip('[]')}]"})
    app = create_app(overrides, served_by=None if loopback else f"bound to {host}, not a loopback address")
    run_simple(host, port, app, threaded=True, use_reloader=False, use_debugger=False)


def new_token(user: str) -> int:
    """A fresh API token for AUTH_MODE token: the token for the user, its sha256 for AUTH_USERS."""
    import secrets

    from .auth import hash_token
    from .storage import USER_RE

    if not USER_RE.match(user):
        print(f"caesar-rest: {user!r} is not a valid user name", file=sys.stderr)
        return 2
    token = secrets.token_urlsafe(32)
    print(f"token (give it to {user}; it is not stored): {token}")
    print(f"settings.yml:\nAUTH_USERS:\n  {user}:\n    tokens_sha256: [{hash_token(token)}]")
    return 0


def run(args: argparse.Namespace) -> int:
    """API, one worker for the backends' pools, and one for the control queue that also schedules the reaper (so the
    reaper never waits behind long jobs), on the embedded default unless CAESAR_* says otherwise. Ctrl-C stops
    them all."""
    from .celery_app import CONTROL_QUEUE

    settings = load_settings()
    env = {**os.environ, "CAESAR_ROOT": settings["ROOT"]}
    os.makedirs(settings["ROOT"], exist_ok=True)
    from . import db
    db.upgrade(settings["DATABASE_URL"])          # once, before the two processes start
    worker = subprocess.Popen(_worker_cmd(settings, list(settings["BACKENDS"]), args.concurrency, beat=False),
                              env=env, start_new_session=True)
    control = subprocess.Popen(_worker_cmd(settings, [CONTROL_QUEUE], 1, beat=True), env=env, start_new_session=True)
    api = subprocess.Popen([sys.executable, "-m", "caesar_rest.cli", "serve", "--host", args.host,
                            "--port", str(args.port)], env=env, start_new_session=True)
    print(f"caesar-rest: API on http://{args.host}:{args.port}/caesar/api/v1.0 , worker pid {worker.pid}, "
          f"state in {settings['ROOT']} (Ctrl-C stops)", flush=True)

    stopping = False

    def stop(*_a) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        if worker.poll() is not None or control.poll() is not None or api.poll() is not None:
            print("caesar-rest: a process exited; stopping", file=sys.stderr)
            code = 1
            break
        time.sleep(0.3)
    for proc in (api, worker, control):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in (api, worker, control):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print("caesar-rest: stopped", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="caesar-rest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="API and a worker on the embedded default (or CAESAR_* settings)")
    p_run.add_argument("--host", default="127.0.0.1")
    p_run.add_argument("--port", type=int, default=8080)
    p_run.add_argument("--concurrency", type=int, default=2)
    p_serve = sub.add_parser("serve", help="the API only, on a threaded development server")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8080)
    sub.add_parser("migrate", help="upgrade the database schema to the newest revision")
    sub.add_parser("settings", help="print every setting with its value and meaning")
    p_token = sub.add_parser("new-token", help="make an API token for AUTH_MODE token, and its AUTH_USERS entry")
    p_token.add_argument("user")
    p_job = sub.add_parser("job", help="operator actions on one job")
    job_sub = p_job.add_subparsers(dest="action", required=True)
    p_refetch = job_sub.add_parser("refetch", help="fetch a finished job's outputs again from the copy its backend "
                                                   "kept (its fetch had failed), then remove that copy")
    p_refetch.add_argument("job_id")
    args = parser.parse_args(argv)
    if args.command == "new-token":
        return new_token(args.user)
    try:
        if args.command == "run":
            return run(args)
        settings = load_settings()
    except SettingsError as exc:        # an unknown key or a value of the wrong type: named, no traceback
        print(f"caesar-rest: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from .errors import CaesarError
        try:
            serve({}, args.host, args.port)
        except CaesarError as exc:      # a setting that cannot work (refusal to serve anonymously...): say it plainly
            print(f"caesar-rest: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "job":
        return job_action(settings, args)
    if args.command == "migrate":
        from . import db
        db.upgrade(settings["DATABASE_URL"])
        print(f"database at {settings['DATABASE_URL'].split('@')[-1]} is up to date")
        return 0
    try:
        print_settings(settings)
    except BrokenPipeError:         # `caesar-rest settings | head`: the reader has what it wanted
        sys.stderr.close()
    return 0


def job_action(settings: Mapping[str, Any], args: argparse.Namespace) -> int:
    """`caesar-rest job refetch <id>`: the worker's code (workers/kept.py), run here with the worker's settings and
    credentials; found by import string like the backends, so the core imports no worker module."""
    from kombu.utils.imports import symbol_by_name

    from .errors import CaesarError

    refetch = symbol_by_name("workers.kept:refetch")
    try:
        done = refetch(settings, args.job_id)
    except CaesarError as exc:
        print(f"caesar-rest: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(done))
    return 0


def print_settings(settings: Mapping[str, Any]) -> None:
    """Every setting (the derived ones too) with its value, secrets redacted, and its one-line doc."""
    for key, value in settings.items():
        print(f"{key} = {redacted(key, value)!r}\n    {setting_doc(key)}")


if __name__ == "__main__":
    sys.exit(main())
