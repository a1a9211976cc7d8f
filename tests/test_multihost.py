"""Three hosts without a shared filesystem (issue 18): the API on host 1, worker pools on hosts 2 and 3, each in its
own network and mount namespace with a private ROOT; S3 (moto) is the only storage they share. Jobs run on both
worker hosts, host 3's workers are SIGKILLed midway, and every job still ends with a reason and every output comes
back from the API host (bench/multihost.py runs the same drill at 200 jobs)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import boto3
import pytest
import requests

from bench.multihost import S3_CREDS, Cluster, drill
from tests import netns
from tests.support import API, TERMINAL, job_processes, wait_until


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def test_fabric_cleans_up_after_a_failure(tmp_path):
    """An error inside the fabric's block still removes its namespaces, veths, bridge and processes."""
    made: dict = {}

    def fail_inside_the_fabric() -> None:
        with netns.Fabric(tmp_path / "net") as fabric:
            host = fabric.add_host("solo", tmp_path / "root")
            made.update(holder=host.holder, ns=host.ns, tag=fabric.tag,
                        sleeper=host.spawn(["sleep", "600"], {"PATH": "/usr/bin:/bin"}, tmp_path / "sleep.log"))
            assert host.run(["hostname"]).stdout.strip() == "solo"
            assert host.run(["ls", "-a", str(tmp_path / "root")]).stdout.split() == [".", "..", ".host-solo"]
            assert list((tmp_path / "root").iterdir()) == []        # the tmpfs is the host's alone
            raise RuntimeError("on purpose")

    with pytest.raises(RuntimeError, match="on purpose"):
        fail_inside_the_fabric()
    holder, ns, tag, sleeper = made["holder"], made["ns"], made["tag"], made["sleeper"]
    assert holder.poll() is not None and sleeper.popen.poll() is not None
    assert ns not in _namespaces()
    assert f"cmb{tag}" not in _links() and f"cmv{tag}" not in _links()
    assert not (netns.OWNERS / tag).exists()


ORPHAN = """
import subprocess, sys, time
from pathlib import Path
from tests import netns
fabric = netns.Fabric(Path(sys.argv[1]) / "net", forward={{{port}: 5672}})
host = fabric.add_host("orphan", Path(sys.argv[1]) / "root")
host.spawn(["sleep", "600"], {{"PATH": "/usr/bin:/bin"}}, Path(sys.argv[1]) / "sleep.log")
outside = subprocess.Popen(["sleep", "600"], start_new_session=True)
fabric.own(outside.pid)
print(fabric.tag, host.ns, host.pid, outside.pid, fabric.forwarders[0].pid, flush=True)
time.sleep(600)
"""


def test_a_run_killed_before_its_cleanup_is_swept(tmp_path):
    """SIGKILL leaves no atexit: the next fabric's sweep removes the dead run's namespace, veth, bridge, its host's
    processes, its forwarder and the root-namespace process it recorded."""
    import os
    import signal
    import sys

    from tests.support import REPO, free_port

    run = subprocess.Popen([sys.executable, "-c", ORPHAN.format(port=free_port()), str(tmp_path)], cwd=REPO,
                           stdout=subprocess.PIPE, text=True)
    assert run.stdout is not None
    tag, ns, holder, outside, forwarder = run.stdout.readline().split()
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert ns in _namespaces() and f"cmb{tag}" in _links()
    removed = netns.sweep()
    assert ns in removed and f"cmb{tag}" in removed, removed
    assert ns not in _namespaces() and f"cmb{tag}" not in _links() and f"cmv{tag}" not in _links()
    for pid in (holder, outside, forwarder):
        wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}") or "Z" in _state(int(pid)), 10,
                   f"process {pid} gone")
    assert not (netns.OWNERS / tag).exists()


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        tag = cluster.fabric.tag
        cluster.stop()
        assert tag not in _namespaces() and f"cmb{tag}" not in _links() and f"cmv{tag}" not in _links()


def test_jobs_across_hosts_survive_the_loss_of_a_worker_host(cluster):
    cluster.start_workers("host2", beat=True)       # the one beat: the reaper that settles host 3's loss
    cluster.start_workers("host3", beat=False)
    hosts = cluster.hosts
    # Each host sees only its own ROOT; the orchestrator's view of the path is an empty directory.
    for name, host in hosts.items():
        marks = sorted(p.name for p in host.path(cluster.root).iterdir() if p.name.startswith(".host-"))
        assert marks == [f".host-{name}"], (name, marks)
    assert list(cluster.root.iterdir()) == []
    # The API answers on host 1's address from the other hosts too (what a load balancer would reach).
    probe = hosts["host3"].run(["curl", "-sS", "--max-time", "5", f"{cluster.base}/health"])
    assert probe.returncode == 0 and probe.stdout, probe.stderr

    # A cancel sent to the API host reaches the job's process on the worker host that runs it (the database flag
    # its runner watches), and the job's processes there are gone.
    blob = cluster.upload(b"cancel me\n", "cancel.txt")
    job_id = cluster.submit("digest", {"inputfile": blob["uuid"], "seconds": 60, "tag": "canceled"})
    wait_until(lambda: cluster.states([job_id])[job_id] == "RUNNING", 60, "the long job running")
    ran_on = cluster.metadata(job_id)["host"]
    assert ran_on in ("host2", "host3") and job_processes(job_id)
    # Its stdout is on the worker host's disk only; the API host shows it while the job runs (the worker's relay to
    # S3: before it, the answer was empty until the job had ended).
    logs = f"{cluster.base}{API}/job/{job_id}/logs"
    wait_until(lambda: requests.get(logs, timeout=10).json()["stdout"] == "canceled\n", 30,
               f"the running job's stdout, from {ran_on}, on the API host")
    assert requests.post(f"{cluster.base}{API}/job/{job_id}/cancel", timeout=30).status_code == 200
    wait_until(lambda: cluster.states([job_id])[job_id] == "CANCELED", 30, "the job canceled")
    wait_until(lambda: not job_processes(job_id), 15, f"the canceled job's processes gone from {ran_on}")
    # Ended, its logs come from the archived directory, and the relayed copy is gone.
    s3 = boto3.client("s3", endpoint_url=cluster.settings["S3_ENDPOINT_URL"], region_name="us-east-1", **S3_CREDS)
    wait_until(lambda: s3.list_objects_v2(Bucket=cluster.settings["S3_BUCKET"], Prefix="caesar/live/")["KeyCount"] == 0,
               15, "the relayed logs removed")
    assert requests.get(logs, timeout=10).json()["stdout"] == "canceled\n"

    result = drill(cluster, 40, seconds=1.0, once_every=4)

    assert result.problems == []
    assert set(result.states) <= set(TERMINAL) and sum(result.states.values()) == 40, result.states
    assert result.running_on_host3_at_kill > 0
    # Both worker hosts ran jobs to the end; host 3's running attempts were lost and settled by host 2's reaper:
    # retried there (the app that retries lost attempts) or ended FAILURE "Job lost ... (worker host3)".
    assert result.ran_on.get("host2", 0) > 0 and result.ran_on.get("host3", 0) > 0, result.ran_on
    assert result.lost_on.get("host3", 0) >= 1 and set(result.lost_on) <= {"host3"}, result.lost_on
    assert result.retried + result.failed_lost == result.lost_on["host3"]
    assert result.states.get("SUCCESS", 0) == result.downloaded == 40 - result.failed_lost
    assert result.doubled == 0
    # Nothing is left running anywhere, and no job directory stayed on a worker host's disk or reached host 1's.
    assert all(state in TERMINAL for state in cluster.states(list(_all_ids(cluster))).values())
    for name in ("host1", "host2"):
        jobs_dir = hosts[name].path(cluster.root) / "jobs"

        def none_left(jobs_dir: Path = jobs_dir) -> bool:
            return not jobs_dir.exists() or not any(p.is_dir() and len(p.name) == 36 for p in jobs_dir.rglob("*"))

        wait_until(none_left, 30, f"the job directories on {name} gone (moved to S3)")
    assert requests.get(f"{cluster.base}/health", timeout=10).status_code == 200


def _all_ids(cluster: Cluster) -> list[str]:
    from sqlalchemy import select

    from caesar_rest.db import session_scope
    from caesar_rest.models import Job

    with session_scope(cluster.db_url) as s:
        return list(s.scalars(select(Job.id)))
