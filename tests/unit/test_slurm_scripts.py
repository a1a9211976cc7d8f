"""The Slurm backend's generated pieces, without a cluster: the container hardening spelt for podman is the
container backend's own (one definition), the podman command line of an image job, the stage manifest a job
script writes, read back and checked (the same shell lines run here under sh), and the script of a TES task of
several executors read back with shlex (tests/tes/test_slurm.py runs it on the cluster)."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from caesar_rest.backends import JobSpec
from caesar_rest.errors import BackendError
from workers.backends.container_security import Hardening, resource_limits
from workers.backends.slurm_container import SlurmPodman
from workers.backends.slurm_script import job_script
from workers.backends.slurm_stage import copy_back, read_manifest


def test_podman_args_spell_every_part_of_the_container_backends_hardening():
    hardening = Hardening(pids_limit=64, tmpfs_size="16m")
    config = {**hardening.host_config({}), **resource_limits(2, 256)}
    args = hardening.podman_args({}, 2, 256)
    assert args == ["--cap-drop=ALL", "--security-opt=no-new-privileges", "--pids-limit=64", "--read-only",
                    "--tmpfs=/tmp:rw,nosuid,nodev,size=16m,mode=1777", "--network=none", "--cpus=2",
                    "--memory=256m", "--memory-swap=256m"]
    assert len(config) == 9         # a new hardening key must be spelt for podman too (podman_args raises)
    assert "--network=bridge" in Hardening().podman_args({"network": True}, 1, None)     # the app's network: true


def test_an_image_job_is_podman_run_as_the_jobs_own_user_with_the_hardening(tmp_path):
    podman = SlurmPodman({}, {"runtime": "/usr/bin/podman", "storage": "/s", "runroot": "/r"}, 2100, 2100)
    (tmp_path / "inputs").mkdir()
    job = JobSpec(job_id="j1", owner="u", app="a", argv=["caesar-sleeper", "--message", "$(id)"], workdir=tmp_path,
                  image="localhost/caesar-apps:latest", options={"image_pull": "if-missing"})
    argv = podman.argv(job, tmp_path, {"HOME": "/tmp"})
    assert argv[:6] == ["/usr/bin/podman", "--root", "/s", "--runroot", "/r", "--log-level=error"]
    assert {"--userns=keep-id", "--user=2100:2100", "--pull=missing", "--cap-drop=ALL", "--read-only",
            "--network=none", "--init"} <= set(argv)
    assert argv[-4:] == ['--entrypoint=["caesar-sleeper"]', "localhost/caesar-apps:latest", "--message", "$(id)"]
    assert f"{tmp_path}/inputs:/job/inputs:ro" in argv and f"{tmp_path}:/job:rw" in argv


def test_the_stage_manifest_the_script_writes_checks_every_file(tmp_path):
    rundir, dest = tmp_path / "run", tmp_path / "dest"
    (rundir / "inputs").mkdir(parents=True)
    (rundir / "inputs" / "in.txt").write_text("input\n")
    script = job_script(["/bin/sh", "-c", "mkdir -p sub; echo out > sub/o.txt; echo log; exit 3"], manifest=True)
    with open(rundir / "stdout.log", "wb") as out:
        done = subprocess.run(["/bin/sh", "-c", script], cwd=rundir, stdout=out, check=False)
    assert done.returncode == 3                       # the app's status is the script's
    manifest = read_manifest(rundir)
    assert manifest is not None and set(manifest) == {"sub/o.txt", "stdout.log"}, manifest
    with open(rundir / "stdout.log", "a") as log:
        log.write("slurmstepd: a line of its own\n")   # a log may grow after the manifest
    assert copy_back(rundir, dest) == 2 and (dest / "sub" / "o.txt").read_text() == "out\n"
    (rundir / "sub" / "o.txt").write_text("0ut\n")
    with pytest.raises(BackendError, match=r"staged output 'sub/o\.txt' .* differs"):
        copy_back(rundir, tmp_path / "again")
    assert not (tmp_path / "again" / "sub" / "o.txt").exists()
    (rundir / "sub" / "o.txt").unlink()
    with pytest.raises(BackendError, match="listed in the job's manifest but is no longer a file"):
        copy_back(rundir, tmp_path / "third")


def test_a_signal_that_killed_the_app_is_raised_again_by_the_script(tmp_path):
    script = job_script(["/bin/sh", "-c", "kill -9 $$"], manifest=True)
    done = subprocess.run(["/bin/sh", "-c", script], cwd=tmp_path, check=False)
    assert done.returncode == -9 and read_manifest(Path(tmp_path)) is not None


def test_a_tes_task_of_several_executors_is_one_script_every_value_quoted(tmp_path):
    """The batch script of a TES task (workers/backends/slurm_tes.py), read back with shlex: each executor's podman
    run is exactly SlurmPodman's argv of it, its streams quoted; the stops follow ignore_error; the trap removes
    every executor's container and ends the script."""
    from workers.backends.slurm_tes import tes_batch_script

    podman = SlurmPodman({}, {"runtime": "/usr/bin/podman"}, 2100, 2100)
    odd = "it's $(id) `x`; | \"\\ *"
    fs = tmp_path / "fs"
    executors = [
        {"argv": ["sh", "-c", odd], "image": "localhost/busybox:latest", "env": {"A": odd}, "workdir": "/w",
         "ignore_error": True, "stdin": str(fs / "w" / "in put"), "stdout": None, "stderr": str(fs / "w" / "e;rm"),
         "paths": {"stdin": "/w/in put", "stderr": "/w/e;rm"}},
        {"argv": ["true"], "image": "localhost/busybox:latest", "env": {}, "workdir": None, "ignore_error": False,
         "stdin": None, "stdout": None, "stderr": None}]
    job = JobSpec(argv=["sh"], image="localhost/busybox:latest", env={}, job_id="J", owner="o", app="tes",
                  workdir=tmp_path, options={"tes": {"index": "task", "mounts": {"/w": str(fs / "w")}, "fs": str(fs),
                                                     "executors": executors}})
    lines = tes_batch_script(podman, job, tmp_path, {"HOME": "/tmp"}).splitlines()
    at = [n for n, line in enumerate(lines) if line.startswith("/usr/bin/podman ") and " run " in line]
    runs = [shlex.split(lines[n]) for n in at]
    assert len(runs) == 2
    first = runs[0]
    assert first[-7:] == ["<", str(fs / "w" / "in put"), ">", str(tmp_path / ".tes" / "executor-0.stdout"), "2>",
                          str(fs / "w" / "e;rm"), "&"], first[-7:]
    assert first[first.index("-c") + 1] == odd and f"A={odd}" in first and "--interactive" in first
    assert "--name=caesar-J-0" in first and "--name=caesar-J-1" in runs[1] and "--cap-drop=ALL" in runs[1]
    assert runs[1][-7:-5] == ["<", "/dev/null"]
    stops = [n for n, line in enumerate(lines) if line.startswith('if [ "$rc" -ne 0 ]')]
    assert stops == [at[1] + 5], stops        # after the second only: the first has ignore_error
    trap = next(shlex.split(line) for line in lines if line.startswith("trap "))
    assert trap[1].endswith("caesar-J-0 caesar-J-1 >/dev/null 2>&1; exit 143") and trap[2] == "TERM"
    checks = [line for line in lines if line.startswith("if ! inside ")]
    why = "executor 0's stdin /w/in put leads outside the task's directories"      # as the task names it
    assert len(checks) == 2 and why in shlex.split(checks[0])
