"""`make run`, README's first command, from nothing: a new virtualenv gets the package without any extra (no test,
backend or production package), the sandbox's tools are checked, and the embedded service runs a shipped app's job
end to end and serves its tarball. Real pip (PyPI, with pip's cache), real make, real bubblewrap."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import tarfile
import time

import requests

from ..support import API, REPO, free_port, http_status, wait_state, wait_until


def test_make_run_installs_the_package_alone_and_serves_a_job(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAESAR_") and k != "VIRTUAL_ENV"}
    env.update(CAESAR_ROOT=str(tmp_path / "var"))
    log_path = tmp_path / "make-run.log"
    log = open(log_path, "wb")  # noqa: SIM115 (closed below, after the process)
    began = time.monotonic()
    proc = subprocess.Popen(["make", "--no-print-directory", "run", f"VENV={venv}", f"RUN_PORT={port}"], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy() -> bool:
            try:
                return requests.get(f"{base}/health", timeout=2).status_code == 200
            except requests.ConnectionError:
                assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
                return False

        wait_until(healthy, 600, "make run to install and serve")
        ready_after = time.monotonic() - began
        job = requests.post(f"{base}{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 1}},
                            timeout=10).json()["job_id"]
        assert wait_state(http_status(base), job, timeout=120)["state"] == "SUCCESS"
        tarball = requests.get(f"{base}{API}/job/{job}/output", timeout=60)
        assert tarball.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(tarball.content), mode="r:gz") as tar:
            assert f"job_{job}/stdout.log" in tar.getnames()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
    text = log_path.read_text(errors="replace")
    assert "caesar-rest: stopped" in text, text[-3000:]
    # Nothing of the extras: the test tools, the backends' clients, PostgreSQL's driver, the production servers.
    python = str(venv / "bin" / "python")
    for module in ("pytest", "boto3", "docker", "htcondor", "psycopg", "gunicorn", "uwsgidecorators", "moto"):
        found = subprocess.run([python, "-c", f"import {module}"], capture_output=True, check=False)
        assert found.returncode != 0, f"make run installed {module}"
    size = int(subprocess.run(["du", "-sb", str(venv)], capture_output=True, text=True, check=True).stdout.split()[0])
    print(f"make run: serving after {ready_after:.0f} s, virtualenv {size / 2**20:.0f} MiB")
    assert size < 900 * 2**20, size          # the full install (make test's) is about 1.3 GB
