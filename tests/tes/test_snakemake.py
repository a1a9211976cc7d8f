"""A Snakemake workflow on the TES server through snakemake-executor-plugin-tes, as a user runs it: two rules, S3
storage on moto's server, real API and worker processes (host runtime), no workaround on the client side. The
plugin asks py-tes 0.4 for the TES 1.0 service-info (GET /v1/tasks/service-info); its executors run `python -m
snakemake` from the PATH the operator gives them (TES_HOST_PATH) with their workdir at /tmp.

The plugin pins py-tes 0.4, which conflicts with the test extra's py-tes>=1.1: the setup.cfg extra workflow-tes is
installed by this test into a scratch venv of its own under var/venvs/ (created on first use, then reused while the
pins are the same)."""
from __future__ import annotations

import configparser
import hashlib
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import requests

from ..support import REPO, embedded_settings, start_api, start_worker
from .conftest import BUCKET, TOKENS, USERS

SNAKEFILE = textwrap.dedent("""\
    localrules: all

    rule all:
        input: "counts.txt"

    rule words:
        output: "words.txt"
        shell: "printf 'alpha beta\\\\ngamma delta epsilon\\\\n' > {output}"

    rule count:
        input: "words.txt"
        output: "counts.txt"
        shell: "wc -w < {input} > {output}; command -v python >> {output}"
    """)


def _workflow_requirements() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return [line.strip() for line in parser["options.extras_require"]["workflow-tes"].splitlines() if line.strip()]


@pytest.fixture(scope="session")
def snakemake_venv() -> Path:
    """The scratch venv with Snakemake and the TES plugin, made once per set of pins (a marker file names them)."""
    requirements = _workflow_requirements()
    venv = REPO / "var" / "venvs" / "snakemake"
    marker = venv / "caesar-requirements.txt"
    wanted = "\n".join(requirements) + "\n"
    if not (marker.is_file() and marker.read_text() == wanted and (venv / "bin" / "snakemake").is_file()):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *requirements], check=True, timeout=1800)
        marker.write_text(wanted)
    return venv


@pytest.fixture(scope="module")
def snakemake_stack(tmp_path_factory, s3_server, snakemake_venv):
    """Token auth; host-runtime executors with the host's network (they reach moto themselves), the scratch venv
    readable in their sandbox and first on their PATH: the operator's settings, nothing from the worker's env."""
    base = tmp_path_factory.mktemp("snakemake-stack")
    settings = embedded_settings(base / "var", AUTH_MODE="token", AUTH_USERS=USERS, TES_HOST_RUNTIME=True,
                                 TES_HOST_NETWORK=True, HEARTBEAT_INTERVAL=1.0,
                                 TES_HOST_PATH=f"{snakemake_venv}/bin:/usr/bin:/bin",
                                 TES_HOST_ENV={"LC_ALL": "C.UTF-8"},
                                 SANDBOX_READ_ONLY_PATHS=[str(snakemake_venv)])
    worker = start_worker(settings, ["local"], base / "worker.log", concurrency=2)
    try:
        api, url = start_api(settings, base / "api.log")
    except Exception:
        worker.stop()
        raise
    yield url, base
    api.stop()
    worker.stop()


def test_py_tes_0_4_service_info_route_answers_the_tes_1_0_shape(snakemake_stack, snakemake_venv):
    """What py-tes 0.4 itself reads, asked by the scratch venv's py-tes (the one the plugin uses)."""
    url, _base = snakemake_stack
    probe = ("import sys, tes; c = tes.HTTPClient(sys.argv[1], token=sys.argv[2]); i = c.get_service_info(); "
             "print(i.name); print(i.doc); print(','.join(i.storage))")
    done = subprocess.run([str(snakemake_venv / "bin" / "python"), "-c", probe, url, TOKENS["alice"]],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    name, doc, storage = done.stdout.splitlines()
    assert name == "caesar-rest TES" and "TES" in doc and "s3://" in storage.split(",")
    body = requests.get(f"{url}/v1/tasks/service-info", timeout=10).json()
    assert set(body) == {"name", "doc", "storage"}


def test_two_rule_workflow_with_s3_storage_completes(snakemake_stack, snakemake_venv, s3_server):
    url, base = snakemake_stack
    endpoint, s3 = s3_server
    workflow = base / f"wf-{uuid.uuid4().hex[:6]}"
    workflow.mkdir()
    (workflow / "Snakefile").write_text(SNAKEFILE)
    prefix = f"snakemake-{uuid.uuid4().hex[:8]}"
    env = {"PATH": f"{snakemake_venv}/bin:/usr/bin:/bin", "HOME": str(workflow), "LANG": "C.UTF-8"}
    argv = [str(snakemake_venv / "bin" / "snakemake"), "--executor", "tes", "--tes-url", url,
            "--tes-token", TOKENS["alice"], "--jobs", "1", "--default-storage-provider", "s3",
            "--default-storage-prefix", f"s3://{BUCKET}/{prefix}", "--storage-s3-endpoint-url", endpoint,
            "--storage-s3-access-key", "testing", "--storage-s3-secret-key", "testing",
            "--container-image", "snakemake/snakemake:v9.27.1", "--latency-wait", "10"]
    done = subprocess.run(argv, cwd=workflow, env=env, capture_output=True, text=True, timeout=900, check=False)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    assert "3 of 3 steps (100%) done" in log, log[-3000:]           # words and count on TES, all local
    counts = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/counts.txt")["Body"].read().decode().splitlines()
    assert counts[0].strip() == "5"
    assert counts[1] == f"{snakemake_venv}/bin/python"      # TES_HOST_PATH, not the worker's own PATH
    words = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/words.txt")["Body"].read()
    assert hashlib.sha256(words).hexdigest() == hashlib.sha256(b"alpha beta\ngamma delta epsilon\n").hexdigest()
    # Both rules ran as TES tasks of alice's, each COMPLETE.
    tasks = requests.get(f"{url}/ga4gh/tes/v1/tasks", params={"view": "BASIC"},
                         headers={"Authorization": f"Bearer {TOKENS['alice']}"}, timeout=10).json()["tasks"]
    ours = [t for t in tasks if any(e.get("workdir") == "/tmp" for e in t.get("executors") or [])]
    assert len(ours) == 2 and all(t["state"] == "COMPLETE" for t in ours), ours
