"""pygeoapi, the reference Python OGC API - Processes server, as the OGC phase's same-run baseline: installed from PyPI
into a virtualenv of its own (never the project's), cached under a stable path, and served under gunicorn with the
same processes x threads as the API, its TinyDB job manager and its `hello-world` process."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.support import Proc, free_port

from .stack import wait_port

VERSION = "0.21.0"          # the figures were taken with 0.21
PROCESS = "hello-world"
#: Where the virtualenv is kept between runs (BENCH_CACHE, else /var/cache/caesar-rest as the scripts' caches).
CACHE = Path(os.environ.get("BENCH_CACHE", "/var/cache/caesar-rest"))


def venv() -> Path:
    """The virtualenv holding pygeoapi VERSION and the API's gunicorn version; made once (about 30 s from PyPI)."""
    import gunicorn

    home = CACHE / f"bench-pygeoapi-{VERSION}-gunicorn-{gunicorn.__version__}"
    stamp = home / ".installed"
    if stamp.exists():
        return home
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"bench-pygeoapi-{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)       # two runs at once: one installs, the other waits and uses it
        if stamp.exists():
            return home
        shutil.rmtree(home, ignore_errors=True)
        # The base interpreter, not this virtualenv's (a venv made from a venv's python still sees only its base).
        base = Path(getattr(sys, "_base_executable", sys.executable))
        subprocess.run([str(base), "-m", "venv", str(home)], check=True, capture_output=True, timeout=300)
        done = subprocess.run([str(home / "bin" / "pip"), "install", "-q", f"pygeoapi=={VERSION}",
                               f"gunicorn=={gunicorn.__version__}"], capture_output=True, text=True, timeout=900,
                              check=False)
        if done.returncode != 0:
            shutil.rmtree(home, ignore_errors=True)
            raise RuntimeError(f"pip install pygeoapi=={VERSION} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        stamp.write_text(VERSION + "\n")
    return home


def config(port: int, workdir: Path) -> dict:
    """The smallest configuration pygeoapi accepts: one process, the TinyDB manager, 10 jobs a page as ours."""
    contact = dict.fromkeys(("name", "position", "address", "city", "stateorprovince", "postalcode", "country",
                             "phone", "fax", "hours", "instructions"), "bench")
    return {
        "server": {"bind": {"host": "127.0.0.1", "port": port}, "url": f"http://127.0.0.1:{port}",
                   "mimetype": "application/json; charset=UTF-8", "encoding": "utf-8", "language": "en-US",
                   "pretty_print": False, "limits": {"default_items": 10, "max_items": 1000},
                   "map": {"url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png", "attribution": "OSM"},
                   "manager": {"name": "TinyDB", "connection": str(workdir / "jobs.db"),
                               "output_dir": str(workdir / "outputs") + "/"}},
        "logging": {"level": "ERROR"},
        "metadata": {"identification": {"title": "bench", "description": "bench", "keywords": ["bench"],
                                        "keywords_type": "theme", "terms_of_service": "https://example.org",
                                        "url": "https://example.org"},
                     "license": {"name": "CC-BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
                     "provider": {"name": "bench", "url": "https://example.org"},
                     "contact": {**contact, "email": "bench@example.org", "url": "https://example.org",
                                 "role": "pointOfContact"}},
        "resources": {PROCESS: {"type": "process", "processor": {"name": "HelloWorld"}}},
    }


class Pygeoapi:
    """pygeoapi under gunicorn (gthread, processes x threads, keep-alive as gunicorn.conf.py has it)."""

    def __init__(self, workdir: Path, processes: int, threads: int) -> None:
        self.workdir = workdir
        self.processes, self.threads = processes, threads
        self.port = free_port()
        self.proc: Proc | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store(self) -> Path:
        return self.workdir / "jobs.db"

    def start(self) -> str:
        home = venv()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "outputs").mkdir(exist_ok=True)
        cfg, api = self.workdir / "pygeoapi.yml", self.workdir / "openapi.yml"
        cfg.write_text(yaml.safe_dump(config(self.port, self.workdir)))
        env = {"PATH": f"{home / 'bin'}:/usr/bin:/bin", "PYGEOAPI_CONFIG": str(cfg), "PYGEOAPI_OPENAPI": str(api),
               "HOME": str(self.workdir)}
        subprocess.run([str(home / "bin" / "pygeoapi"), "openapi", "generate", str(cfg), "--output-file", str(api)],
                       env=env, check=True, capture_output=True, timeout=120)
        self.proc = Proc([str(home / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{self.port}", "--workers",
                          str(self.processes), "--worker-class", "gthread", "--threads", str(self.threads),
                          "--worker-connections", str(self.threads * 2), "--keep-alive", "5",
                          "--chdir", str(self.workdir), "pygeoapi.flask_app:APP"], env, self.workdir / "gunicorn.log")
        wait_port(self.port, self.proc)
        deadline = time.time() + 60          # every worker booted (each loads pygeoapi on its own)
        while time.time() < deadline and self.proc.log().count("Booting worker") < self.processes:
            time.sleep(0.1)
        time.sleep(0.5)
        return self.base

    def jobs(self) -> list[dict]:
        """The jobs in the TinyDB store, read from its file (read again if caught while it is rewritten)."""
        for _ in range(50):
            try:
                doc = json.loads(self.store.read_text() or "{}")
            except FileNotFoundError:
                return []
            except json.JSONDecodeError:
                time.sleep(0.02)
                continue
            return list(doc.get("_default", {}).values())
        raise RuntimeError(f"{self.store} is not JSON")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
