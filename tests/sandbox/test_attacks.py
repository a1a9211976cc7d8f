"""Hostile jobs against real API and worker processes and real bubblewrap: each tries, as an app job on the local
backend and as a TES host-runtime task, what issue 19 saw working, and must fail with the sandbox."""
from __future__ import annotations

import os
import time

import pytest
import requests

from ..support import API, job_processes

RUNS = ["app_job", "tes_task"]


def _session_leaders(job_id: str) -> list[int]:
    """The job's processes that lead a session of their own (setsid)."""
    found = []
    for pid in job_processes(job_id):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                session = int(fh.read().rsplit(")", 1)[1].split()[3])
        except (OSError, IndexError, ValueError):
            continue
        if session == pid:
            found.append(pid)
    return found


def _run(stack, how: str, action: str, target: str = "") -> dict:
    if how == "app_job":
        return stack.app_job(action, target)[0]
    return stack.tes_task(action, target)


@pytest.mark.parametrize("how", RUNS)
@pytest.mark.parametrize("where", ["root", "home"])
def test_a_host_file_outside_the_job_cannot_be_read(stack, bait, how, where):
    out = _run(stack, how, "read", str(bait[where]))
    assert "data" not in out and out["error"].startswith(("FileNotFoundError", "PermissionError")), out
    assert bait["text"] not in str(out)


@pytest.mark.parametrize("how", RUNS)
def test_the_services_configuration_in_etc_cannot_be_read(stack, service_config, secret, how):
    out = _run(stack, how, "read", str(service_config / "caesar-rest.env"))
    assert "data" not in out and out["error"].startswith("FileNotFoundError"), out
    assert secret not in str(out)


@pytest.mark.parametrize("how", RUNS)
def test_the_workers_secret_is_not_in_the_jobs_environment(stack, secret, how):
    out = _run(stack, how, "env", secret)
    assert out.get("ok") and out["found"] == [], out
    # Its own pid namespace: the worker's processes are not there to read /proc/<pid>/environ from.
    assert max(out["pids"]) < 100, out


@pytest.mark.parametrize("how", RUNS)
def test_root_cannot_be_listed(stack, how):
    assert (stack.root / "caesar.db").exists()
    out = _run(stack, how, "list", str(stack.root))
    assert "names" not in out and out["error"].startswith("FileNotFoundError"), out
    assert "caesar.db" not in str(_run(stack, how, "list", "/")), "the job's root shows only system directories"


@pytest.mark.parametrize("how", RUNS)
def test_a_service_on_the_hosts_loopback_cannot_be_reached(stack, listener, how):
    before = listener.accepted
    out = _run(stack, how, "connect", str(listener.port))
    assert "data" not in out and out["error"].startswith(("ConnectionRefusedError", "OSError")), out
    assert listener.accepted == before


def test_an_app_the_operator_lets_onto_the_network_reaches_it(stack, listener):
    """network: true in an app's YAML (the operator's choice) shares the host's network: the same probe connects."""
    before = listener.accepted
    out, _files = stack.app_job("connect", str(listener.port), app="netprobe")
    assert out.get("data") == "internal" and listener.accepted == before + 1, out


@pytest.mark.parametrize("how", RUNS)
def test_a_fork_bomb_stays_inside_its_pids_limit(stack, pids_max, how):
    # Bounded: at most 200 sleeping children even if no limit held, which this machine takes in its stride.
    out = _run(stack, how, "fork", "200")
    assert out.get("ok") and out["forked"] < pids_max and out["fork_error"], out
    # The worker is fine and runs the next job.
    assert _run(stack, how, "list", "/")["ok"]


def test_a_staged_upload_is_read_without_changing_the_upload(stack):
    """The job (the sandbox user) reads its input, and the stored upload keeps its owner, group and mode: the
    staged input is the same inode, so a chgrp there (as the sandbox first did) changed the group nginx and the
    container backend read uploads through. The data directory stays closed to other accounts."""
    r = requests.post(f"{stack.base}{API}/upload", files={"file": ("in.txt", b"staged bytes\n")}, timeout=30)
    assert r.status_code == 200, r.text
    stored = next((stack.root / "data").glob(f"*/{r.json()['uuid']}.*"))
    before = os.stat(stored)
    out, _files = stack.app_job("readinput", input=r.json()["uuid"])
    assert out.get("data") == "staged bytes\n", out
    after = os.stat(stored)
    assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)
    assert not os.stat(stack.root / "data").st_mode & 0o007


def test_home_is_scratch_and_stays_out_of_the_tarball(stack):
    out, files = stack.app_job("home")
    assert out["ok"] and out["home"].endswith("/tmp/home"), out
    assert not [name for name in files if ".cache" in name or "left-behind" in name], sorted(files)


@pytest.mark.parametrize("how", RUNS)
def test_cancel_reaches_a_child_that_left_the_process_group(stack, how):
    job_id = stack.submit(how, "escape")
    deadline = time.time() + 30
    while len(_session_leaders(job_id)) < 2:    # the one Popen started, and the probe's child after its setsid()
        assert time.time() < deadline, job_processes(job_id)
        time.sleep(0.1)
    assert stack.cancel(how, job_id) == "CANCELED"
    deadline = time.time() + 10
    while job_processes(job_id) and time.time() < deadline:
        time.sleep(0.1)
    assert job_processes(job_id) == []


def test_a_task_directory_over_the_interpreters_home_still_runs(stack):
    """The launcher's interpreter is bound at a place of its own, so a volume may cover the worker's Python
    (here its prefix's ancestor); the loader path it needs then is not left in the command's environment."""
    import sys

    top = "/" + sys.base_prefix.strip("/").split("/")[0]
    out = stack.tes_task("env", "/.caesar/python", volumes=[top])
    assert out.get("ok") and out["found"] == [], out


NON_ROOT_PROBE = r"""
import subprocess, sys
sys.path.insert(0, sys.argv[1])
from sbpkg import sandbox
box = sandbox.Sandbox({"SANDBOX_CGROUP": sys.argv[2], "SANDBOX_PIDS_MAX": 16})
try:
    print("check:", box.check(), flush=True)
except sandbox.SandboxError as exc:
    print("refused:", exc)
    sys.exit(0)
spec = sandbox.SandboxSpec(argv=["/bin/sh", "-c", "id -u; i=0; while [ $i -lt 60 ]; do sleep 5 & i=$((i+1)); done"],
                           cwd="/", env={"PATH": "/usr/bin:/bin"}, limits=box.limits(None))
started = box.start(spec, subprocess.DEVNULL, None, subprocess.STDOUT, "nonroot")
started.popen.wait()
box.release(started)
"""


def test_a_worker_that_is_not_root_runs_jobs_as_itself_with_a_pids_limit_each(delegated_cgroup):
    """The sandbox module run by an unprivileged user (nobody, with Debian's python3: the venv's interpreter
    lives under /root): bubblewrap in a user namespace of its own, the job keeps that uid, and its pids limit is
    a control group delegated to the user or, without one, RLIMIT_NPROC inside the job's user namespace."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from ..support import REPO

    scratch = tempfile.TemporaryDirectory(prefix="caesar-nonroot-")   # pytest's tmp_path is root's alone (0700)
    tmp_path = Path(scratch.name)
    package = tmp_path / "sbpkg"
    package.mkdir()
    for name in ("sandbox.py", "cgroups.py"):
        shutil.copy(REPO / "workers" / name, package / name)
    (package / "__init__.py").write_text("")
    for path in (tmp_path, package, *package.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-I", "-c",
                 NON_ROOT_PROBE, str(tmp_path)]
    for setting, how in ((str(delegated_cgroup), f" at {delegated_cgroup}"),
                         ("auto", "RLIMIT_NPROC in the job's user namespace")):
        done = subprocess.run([*as_nobody, setting], capture_output=True, text=True, timeout=60, cwd="/", check=False)
        lines = done.stdout.splitlines()
        assert lines[0].startswith("check: jobs run in bubblewrap as the worker's uid 65534 in a user namespace"), done
        assert "pids limit 16 by " in lines[0] and lines[0].endswith(how), done
        assert lines[1] == "65534" and "Cannot fork" in done.stdout, done
    scratch.cleanup()
