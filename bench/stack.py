"""The production stack for one bench run: a fresh PostgreSQL database, queue names unique to the run,
RabbitMQ + Redis, gunicorn serving the API from the repository's gunicorn.conf.py, Celery worker pools."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support import REPO, Proc, create_pg_database, drop_pg_database, free_port, production_settings, settings_env

BENCH_DIR = Path(__file__).resolve().parent
APPS_DIR = BENCH_DIR / "apps"
GUNICORN = Path(sys.executable).parent / "gunicorn"
UWSGI_BIN = Path(sys.executable).parent / "uwsgi"


def children(pid: int) -> list[int]:
    try:
        return sorted(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        return []


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children(current))
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the processes, their reaped children included (/proc/<pid>/stat)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / _TICK     # utime stime cutime cstime
    return total


def cpu_split(pid: int) -> dict[str, float]:
    """CPU seconds of a Celery worker: its main process, its pool processes, and what the pool's reaped
    children (the jobs' processes) used."""
    def fields(p: int) -> list[int]:
        try:
            return [int(x) for x in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[11:15]]
        except OSError:
            return [0, 0, 0, 0]
    main = fields(pid)
    pool = [fields(c) for c in children(pid)]
    return {"main": (main[0] + main[1]) / _TICK, "pool": sum(f[0] + f[1] for f in pool) / _TICK,
            "jobs": sum(f[2] + f[3] for f in pool) / _TICK}


def wait_port(port: int, proc: Proc, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.log_path.name} exited:\n{proc.log()[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s:\n{proc.log()[-3000:]}")


class _Server:
    """A WSGI server process serving the API: its worker processes, and a graceful stop."""

    proc: Proc | None = None

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid) if self.proc else []

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM, timeout=30)
            self.proc = None


class Gunicorn(_Server):
    """The API under gunicorn with the repository's gunicorn.conf.py, bound to a TCP port on loopback."""

    def __init__(self, settings: dict[str, Any], log: Path, processes: int, threads: int,
                 app: str = "caesar_rest.wsgi:app") -> None:
        self.app = app
        self.port = free_port()
        self.processes, self.threads = processes, threads
        self.env = {**settings_env(settings), "CAESAR_WSGI_SOCKET": f"127.0.0.1:{self.port}",
                    "CAESAR_WSGI_PROCESSES": str(processes), "CAESAR_WSGI_THREADS": str(threads)}
        self.log = log
        self.proc: Proc | None = None

    def start(self) -> None:
        self.proc = Proc([str(GUNICORN), "-c", str(REPO / "gunicorn.conf.py"), self.app],
                         self.env, self.log)
        wait_port(self.port, self.proc)
        # Every worker has loaded the app (each answers /health once it is up).
        deadline = time.time() + 60
        while time.time() < deadline and self.proc.log().count("Booting worker") < self.processes:
            time.sleep(0.1)
        time.sleep(0.5)



class UWSGI(_Server):
    """The API under uWSGI with the repository's uwsgi.ini (nginx's production peer), plus an HTTP socket on
    loopback so curl can talk to it directly."""

    def __init__(self, settings: dict[str, Any], workdir: Path, processes: int, threads: int,
                 app: str | None = None) -> None:
        self.app = app          # another WSGI app than uwsgi.ini's (the discard app), same server settings
        # Unix socket paths (the uwsgi socket, stats) must stay under ~100 bytes: a short directory of its own.
        self.rundir = Path(tempfile.mkdtemp(prefix="cbu-", dir="/tmp"))
        self.port = free_port()
        self.processes, self.threads = processes, threads
        self.env = {**settings_env(settings), "CAESAR_WSGI_SOCKET": str(self.rundir / "uwsgi.sock"),
                    "CAESAR_WSGI_RUNDIR": str(self.rundir), "CAESAR_WSGI_PROCESSES": str(processes),
                    "CAESAR_WSGI_THREADS": str(threads)}
        self.log = workdir / "logs" / ("uwsgi.log" if app is None else "uwsgi-other-app.log")
        self.proc: Proc | None = None

    def start(self) -> str:
        (self.rundir / "reload").touch()
        other = ["--module", self.app] if self.app else []
        self.proc = Proc([str(UWSGI_BIN), "--ini", str(REPO / "uwsgi.ini"), *other,
                          "--http-socket", f"127.0.0.1:{self.port}"], self.env, self.log)
        wait_port(self.port, self.proc)
        deadline = time.time() + 60
        while time.time() < deadline and self.proc.log().count("WSGI app 0 (mountpoint='') ready") < self.processes:
            time.sleep(0.1)
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.rundir, ignore_errors=True)


class Stack:
    """Everything one run needs; stop() removes the database, the queues' messages and the scratch directory."""

    def __init__(self, quick: bool, scratch: Path | None = None, keep: bool = False,
                 job_poll_interval: float | None = None, processes: int = 4, threads: int = 4) -> None:
        self.quick = quick
        self.keep = keep
        base = Path(scratch) if scratch else None
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="caesar-bench-", dir=base))
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self.db_url = create_pg_database()
        extra: dict[str, Any] = {"APPS_DIR": str(APPS_DIR), "BACKENDS": {"local": {}},
                                 # gunicorn/uWSGI refuse AUTH_MODE none unless told: the bench measures anonymous
                                 "ALLOW_ANONYMOUS": True,
                                 # the reaper must not republish jobs the drain test queued on purpose
                                 "PENDING_REPUBLISH_AFTER": 3600.0}
        #: What differs from the defaults: passed to every process as CAESAR_* variables.
        self.overrides = production_settings(self.root / "var", self.db_url, **extra)
        if job_poll_interval is None:    # production_settings tunes the tests' interval; the bench keeps the default
            del self.overrides["JOB_POLL_INTERVAL"]
        else:
            self.overrides["JOB_POLL_INTERVAL"] = job_poll_interval
        from caesar_rest.config import load_settings
        self.settings = load_settings(self.overrides, environ={})
        self.prefix = self.settings["QUEUE_PREFIX"]
        self.api = Gunicorn(self.overrides, self.logs / "gunicorn.log", processes, threads)
        self.workers: list[Proc] = []
        self._celery = None

    # ---- pieces ------------------------------------------------------------------------------------------
    def migrate(self) -> None:
        from caesar_rest import db
        db.upgrade(self.db_url)

    @property
    def celery(self):
        """A Celery app configured exactly like the API's (publishes with the same transport options)."""
        if self._celery is None:
            from caesar_rest.celery_app import make_celery
            self._celery = make_celery(self.settings)
        return self._celery

    def start_api(self) -> str:
        self.api.start()
        return f"http://127.0.0.1:{self.api.port}"

    def spawn_worker(self, concurrency: int, name: str = "local", app: str = "workers.celery", queue: str = "local",
                     extra: dict[str, Any] | None = None) -> Proc:
        """A Celery pool, not waited for (see wait_ready); its hostname is <name>@<host>, name it uniquely.
        extra: settings of this pool only (e.g. SANDBOX none for the without-sandbox baseline)."""
        cmd = [sys.executable, "-m", "celery", "-A", app, "worker", "--loglevel", "INFO", "-Q", self.prefix + queue,
               "--concurrency", str(concurrency), "--without-gossip", "--without-mingle", "--hostname", f"{name}@%h"]
        proc = Proc(cmd, settings_env({**self.overrides, **(extra or {})}), self.logs / f"worker-{name}.log")
        self.workers.append(proc)
        return proc

    @staticmethod
    def wait_ready(*procs: Proc, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        waiting = list(procs)
        while waiting and time.time() < deadline:
            for proc in list(waiting):
                if "ready." in proc.log():
                    waiting.remove(proc)
                elif proc.popen.poll() is not None:
                    raise RuntimeError(f"worker exited at start:\n{proc.log()[-3000:]}")
            time.sleep(0.1)
        if waiting:
            raise RuntimeError(f"worker not ready in {timeout} s:\n{waiting[0].log()[-3000:]}")

    def start_worker(self, concurrency: int, name: str = "local") -> Proc:
        """A local pool, ready."""
        proc = self.spawn_worker(concurrency, name)
        self.wait_ready(proc)
        return proc

    def spawn_bare_worker(self) -> Proc:
        """The baseline pool: bench.bare's empty task on queue <prefix>bare, same pool type and log level as the
        job pool's."""
        import uuid

        return self.spawn_worker(2, f"bare{uuid.uuid4().hex[:6]}", app="bench.bare", queue="bare")

    def stop_worker(self, *procs: Proc) -> None:
        """SIGKILL to the pool's process group: the bench stops a pool only once its work is done (nothing
        unacknowledged), and even a cold shutdown takes seconds."""
        for proc in procs:
            proc.stop(signal.SIGKILL, timeout=30)
            if proc in self.workers:
                self.workers.remove(proc)

    def purge(self, pool: str = "local") -> int:
        """Drop every message waiting in a pool's queue (jobs the throughput test queued and nobody runs)."""
        with self.celery.connection_for_write() as conn:
            channel = conn.channel()
            try:
                return int(channel.queue_purge(self.prefix + pool) or 0)
            except conn.channel_errors:
                return 0
            finally:
                channel.close()

    def stop(self) -> None:
        for proc in list(self.workers):
            try:
                proc.stop(signal.SIGTERM, timeout=30)
            except Exception:
                pass
        self.workers.clear()
        self.api.stop()
        try:
            self._delete_queues()
        except Exception:
            pass
        try:
            drop_pg_database(self.db_url)
        except Exception:
            pass
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def _delete_queues(self) -> None:
        with self.celery.connection_for_write() as conn:
            for name in ("local", "bare"):
                channel = conn.channel()
                try:
                    channel.queue_delete(self.prefix + name)
                except conn.channel_errors:
                    pass
                finally:
                    try:
                        channel.close()
                    except Exception:
                        pass
        self.celery.close()

