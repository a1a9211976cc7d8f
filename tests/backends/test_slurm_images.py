"""Apps with an image on Slurm (issue 16), on the real one-node cluster: a slurm backend whose settings name the
nodes' container runtime (the job user's rootless Podman, scripts/slurm.sh images) runs the app's image with the
container backend's hardening (container_security.Hardening, spelt as podman options): as the job's own non-root
user, every capability dropped, no new privileges, a read-only root with a tmpfs /tmp, no network, the job
directory at /job with its inputs read-only. A slurm backend without a runtime refuses a job asking for an image:
a 400 naming the problem, and no job is made.

Not checked here: podman's --memory and --pids-limit, which rootless Podman ignores on this machine's cgroup v1
(it says so on the job's stderr); Slurm's own cgroup holds the job's memory (the OOM test of test_slurm.py), and
the pids limit is also set as RLIMIT_NPROC in the container's user namespace, which holds a fork bomb (tested)."""
from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from ..support import API, job_processes, upload, wait_until
from .slurm_fixtures import SlurmStack, shared_root, slurm_options
from .test_slurm import explain, logs, members, slurm_record, submit, wait

IMAGE = "localhost/caesar-apps:latest"
# What the job sees of itself inside the container: one fact a line.
PROBE = ("id -u; id -g; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
         "echo net $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '); "
         "if touch /probe 2>/dev/null; then echo root-writable; else echo root-read-only; fi; "
         "if touch inputs/x 2>/dev/null; then echo inputs-writable; else echo inputs-read-only; fi; "
         "echo home=$HOME pwd=$(pwd); echo written > probe.txt")
# A fork bomb, bounded so that it ends by itself: up to 200 children that sleep 3 s; how many it could make.
FORKER = json.dumps("import os, resource, time\n"
                    "print(resource.getrlimit(resource.RLIMIT_NPROC)[0])\n"
                    "made = 0\n"
                    "for _ in range(200):\n"
                    "    try:\n"
                    "        pid = os.fork()\n"
                    "    except OSError:\n"
                    "        break\n"
                    "    if pid == 0:\n"
                    "        time.sleep(3)\n"
                    "        os._exit(0)\n"
                    "    made += 1\n"
                    "print('forked', made)\n")
APPS = {
    "sleeper_image": f"""
name: sleeper_image
version: "1"
command: [caesar-sleeper]
backends: [slurm_podman, slurm_podman_stage, slurm]
default_backend: slurm_podman
image: {IMAGE}
resources: {{cpus: 1, memory_mb: 512, time_limit: 600}}
outputs: [sleeper.txt]
options:
  seconds: {{type: float, default: 0}}
  message: {{type: string, default: hello}}
""",
    "forker": f"""
name: forker
version: "1"
command: [python3, -c, {FORKER}]
backends: [slurm_podman_small]
image: {IMAGE}
resources: {{cpus: 1, memory_mb: 128, time_limit: 120}}
""",
    "probe": f"""
name: probe
version: "1"
command: [/bin/sh, -c, "{PROBE}"]
backends: [slurm_podman]
image: localhost/busybox:latest
resources: {{cpus: 1, memory_mb: 128, time_limit: 120}}
outputs: [probe.txt]
options:
  inputfile: {{type: file}}
""",
}


@pytest.fixture(scope="module")
def image_stack(slurm_cluster, slurm_podman) -> Iterator[SlurmStack]:
    root = shared_root(slurm_cluster)
    (root / "scratch-images").mkdir()
    extra = {"slurm_podman": slurm_options(slurm_cluster, container=slurm_podman),
             "slurm_podman_small": slurm_options(slurm_cluster, container={**slurm_podman, "pids_limit": 32}),
             "slurm_podman_stage": slurm_options(slurm_cluster, container=slurm_podman, workdir="stage",
                                                 scratch=str(root / "scratch-images"))}
    stack = SlurmStack(slurm_cluster, root, extra, APPS)
    try:
        yield stack
    finally:
        stack.close()
        shutil.rmtree(root, ignore_errors=True)


def containers_of(stack: SlurmStack, job_id: str) -> list[str]:
    """The job user's containers (any state) labelled with the caesar job id, as Podman on the node lists them."""
    podman = stack.app.config["BACKENDS"]["slurm_podman"]["container"]
    home = podman["runroot"].rsplit("/", 1)[0] + "/home"
    out = subprocess.run(
        ["runuser", "-u", stack.cluster["CAESAR_TEST_SLURM_USER"], "--", "env", f"HOME={home}",
         f"XDG_RUNTIME_DIR={podman['runroot']}", f"CONTAINERS_CONF={podman['conf']}", podman["runtime"],
         "--root", podman["storage"], "--runroot", podman["runroot"], "--storage-driver", "overlay", "ps", "-a",
         "--filter", f"label=caesar.job_id={job_id}", "--format", "{{.ID}}"],
        capture_output=True, text=True, timeout=60, check=True, cwd="/tmp")
    return out.stdout.split()


def test_an_app_with_an_image_runs_in_it_with_the_container_backends_hardening(image_stack):
    stack = image_stack
    f = upload(stack.client, b"read only\n", "in.txt")
    job_id = submit(stack, "probe", backend="slurm_podman", inputfile=f["uuid"])
    st = wait(stack, job_id)
    assert st["state"] == "SUCCESS", explain(stack, job_id)
    seen = members(stack, job_id)["stdout.log"].decode().splitlines()
    uid = stack.cluster["CAESAR_TEST_SLURM_UID"]
    assert seen[:2] == [uid, uid], seen                         # the job's own user, not root, not the image's
    assert "CapEff:\t0000000000000000" in seen and "NoNewPrivs:\t1" in seen, seen
    assert "net lo" in seen, seen                               # no network but loopback
    assert "root-read-only" in seen and "inputs-read-only" in seen, seen
    assert "home=/tmp pwd=/job" in seen, seen
    assert members(stack, job_id)["probe.txt"] == b"written\n"
    assert slurm_record(stack, job_id, "slurm_podman")["user_name"] == stack.cluster["CAESAR_TEST_SLURM_USER"]
    wait_until(lambda: not containers_of(stack, job_id), 30, "the job's container removed (--rm)")


def test_a_fork_bomb_in_an_image_job_stops_at_the_pids_limit(image_stack):
    """The container backend's pids limit holds on Slurm too: of 200 processes asked for, the container gets no
    more than its limit (32 here), although rootless Podman cannot set --pids-limit on this cgroup v1 node."""
    stack = image_stack
    job_id = submit(stack, "forker", backend="slurm_podman_small")
    st = wait(stack, job_id)
    assert st["state"] == "SUCCESS", explain(stack, job_id)
    lines = members(stack, job_id)["stdout.log"].decode().split()
    assert lines[0] == "32", lines                              # RLIMIT_NPROC inside: the pids limit
    made = int(lines[lines.index("forked") + 1])
    assert 0 < made < 32, f"{made} children: the limit did not hold"


@pytest.mark.parametrize("backend", ["slurm_podman", "slurm_podman_stage"])
def test_the_caesar_apps_image_runs_the_shipped_sleeper_on_slurm(image_stack, backend):
    stack = image_stack
    job_id = submit(stack, "sleeper_image", backend=backend, message="from the image")
    st = wait(stack, job_id)
    assert st["state"] == "SUCCESS", explain(stack, job_id)
    out = members(stack, job_id)
    assert out["sleeper.txt"].startswith(b"from the image") and b"from the image" in out["stdout.log"], sorted(out)


def test_cancel_of_an_image_job_leaves_no_process_nor_container_on_the_node(image_stack):
    stack = image_stack
    job_id = submit(stack, "sleeper_image", backend="slurm_podman", seconds=300, message="cancel me")
    wait(stack, job_id, ["RUNNING"])
    wait_until(lambda: "cancel me" in logs(stack, job_id)["stdout"], 90, "the container's stdout while it runs")
    assert wait_until(lambda: containers_of(stack, job_id), 30, "the job's container on the node")
    r = stack.client.post(f"{API}/job/{job_id}/cancel")
    assert r.status_code == 200, r.get_json()
    st = wait(stack, job_id, timeout=60)
    assert st["state"] == "CANCELED", st
    wait_until(lambda: not job_processes(job_id), 30, "the cancelled job's processes gone (podman and the app)")
    wait_until(lambda: not containers_of(stack, job_id), 30, "the cancelled job's container removed")


def test_an_image_on_a_slurm_backend_without_a_runtime_is_a_400_and_makes_no_job(image_stack):
    stack = image_stack
    before = stack.client.get(f"{API}/jobs").get_json()
    r = stack.client.post(f"{API}/job", json={"app": "sleeper_image", "backend": "slurm", "job_inputs": {}})
    assert r.status_code == 400, r.get_json()
    body = r.get_json()
    assert f"asks for the container image {IMAGE}" in body["message"] and "no container runtime" in body["message"]
    assert body.get("field") == "app", body
    assert stack.client.get(f"{API}/jobs").get_json() == before
