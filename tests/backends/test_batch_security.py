"""One AWS Batch job against another's manifest and presigned URLs, on moto's server with jobs as real Podman
containers. moto checks no S3 signature, so what is shown is what holds on S3 as well: a URL of one job that
reached another (a log, a DescribeJobs reader) is dead once its job has started, nothing of a job's keys derives
from its id, its URLs live no longer than they must, and no AWS credential goes into a job."""
from __future__ import annotations

import io
import re
import tarfile
import time
from urllib.parse import parse_qs, urlsplit

from ..support import API, client_status, upload, wait_state
from .batch_fixtures import BatchStack, aws

TIMEOUT = 180
QUEUE_ALLOWANCE = 86400     # the backend's default: the time a job may wait in the queue


def submit(stack: BatchStack, script: str, inputfile: str | None = None) -> str:
    inputs = {"script": script, **({"inputfile": inputfile} if inputfile else {})}
    r = stack.client.post(f"{API}/job", json={"app": "bsh", "job_inputs": inputs})
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def handle(stack: BatchStack, job_id: str) -> tuple[str, str]:
    """(Batch job id, S3 key prefix) once the worker has submitted the job."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        value = stack.client.get(f"{API}/job/{job_id}/metadata").get_json().get("handle")
        if value:
            batch_id, _, prefix = value.partition("|")
            return batch_id, prefix
        assert time.monotonic() < deadline, f"job {job_id} was never submitted to Batch"
        time.sleep(0.2)


def described(stack: BatchStack, batch_id: str) -> dict:
    return aws("batch", stack.setup.endpoint).describe_jobs(jobs=[batch_id])["jobs"][0]


def stdout(stack: BatchStack, job_id: str) -> str:
    r = stack.client.get(f"{API}/job/{job_id}/output")
    assert r.status_code == 200, r.get_json()
    with tarfile.open(fileobj=io.BytesIO(r.data), mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/stdout.log"))
        return tar.extractfile(member).read().decode()


def test_another_jobs_manifest_url_is_dead_once_that_job_started(batch_stack):
    stack = batch_stack
    secret = f"alice's private data {time.time_ns()}"
    data = upload(stack.client, secret.encode(), name="private.txt")
    # The victim holds its container until the test has seen what the attacker got.
    victim = submit(stack, 'cat "$0" > /dev/null; sleep 170', inputfile=data["uuid"])
    batch_id, prefix = handle(stack, victim)
    s3 = aws("s3", stack.setup.endpoint)
    deadline = time.monotonic() + 60
    while described(stack, batch_id)["status"] != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    # Once the victim's stager has read it, its manifest is gone (on the old code it stays: the attacker reads it).
    while s3.list_objects_v2(Bucket=stack.setup.bucket, Prefix=f"{prefix}manifest.json").get("KeyCount") \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    command = described(stack, batch_id)["container"]["command"]
    manifest_url = command[command.index("--") - 1]

    # The attacker: another job that got hold of the victim's manifest URL, and follows every URL inside it.
    attack = ("python3 - <<'EOF'\n"
              "import json, urllib.request, urllib.error\n"
              f"url = {manifest_url!r}\n"
              "try:\n"
              "    manifest = json.load(urllib.request.urlopen(url, timeout=30))\n"
              "except urllib.error.HTTPError as exc:\n"
              "    raise SystemExit(print('manifest', exc.code))\n"
              "print('manifest 200')\n"
              "for item in manifest['inputs']:\n"
              "    try:\n"
              "        print('input', urllib.request.urlopen(item['url'], timeout=30).read().decode())\n"
              "    except urllib.error.HTTPError as exc:\n"
              "        print('input', exc.code)\n"
              "EOF\n")
    attacker = submit(stack, attack)
    status = wait_state(client_status(stack.client), attacker, timeout=TIMEOUT)
    try:
        assert status["state"] == "SUCCESS", status
        seen = stdout(stack, attacker)
        assert secret not in seen, seen
        assert seen.split() == ["manifest", "404"], seen
    finally:
        stack.client.post(f"{API}/job/{victim}/cancel")
        wait_state(client_status(stack.client), victim, timeout=TIMEOUT)


def test_a_jobs_keys_urls_and_powers_are_its_own(batch_stack):
    stack = batch_stack
    job_id = submit(stack, "env")
    batch_id, prefix = handle(stack, job_id)
    status = wait_state(client_status(stack.client), job_id, timeout=TIMEOUT)
    assert status["state"] == "SUCCESS", status
    # 128 random bits name the job's objects; its id, which other users may see, gives nothing away.
    assert job_id not in prefix and re.fullmatch(r"batch/[0-9a-f]{32}/", prefix), prefix
    # The manifest URL lives as long as the job may wait to start, not for its whole time limit on top.
    job = described(stack, batch_id)
    command = job["container"]["command"]
    expires = int(parse_qs(urlsplit(command[command.index("--") - 1]).query)["X-Amz-Expires"][0])
    assert expires == QUEUE_ALLOWANCE, expires
    # No AWS credential reaches the job: no job role, none in its environment.
    definition = aws("batch", stack.setup.endpoint).describe_job_definitions(
        jobDefinitions=[job["jobDefinition"]])["jobDefinitions"][0]
    assert not definition["containerProperties"].get("jobRoleArn"), definition
    names = {line.split("=", 1)[0] for line in stdout(stack, job_id).splitlines() if "=" in line}
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"}, names
