"""AWS Batch backend against moto's server, jobs running as real Podman containers: inputs from S3 storage in,
outputs back into the tarball, failures with the app's exit status, cancel, and checksums end to end."""
from __future__ import annotations

import hashlib
import io
import tarfile
import time

from caesar_rest.s3store import Checksums

from ..support import API, client_status, full_health, upload, wait_state, wait_until
from .batch_fixtures import aws

TIMEOUT = 180


def submit(client, script: str, inputfile: str | None = None, app: str = "bsh") -> str:
    inputs = {"script": script, **({"inputfile": inputfile} if inputfile else {})}
    response = client.post(f"{API}/job", json={"app": app, "job_inputs": inputs})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job_id"]


def tarball(client, job_id: str) -> dict[str, bytes]:
    response = client.get(f"{API}/job/{job_id}/output")
    assert response.status_code == 200, response.data[:300]
    with tarfile.open(fileobj=io.BytesIO(response.data), mode="r:gz") as tar:
        return {m.name.split("/", 1)[1] if "/" in m.name else m.name: tar.extractfile(m).read()
                for m in tar if m.isfile()}


def batch_job(stack, job_id: str) -> dict:
    handle = stack.client.get(f"{API}/job/{job_id}/metadata").get_json()["handle"]
    return aws("batch", stack.setup.endpoint).describe_jobs(jobs=[handle.split("|")[0]])["jobs"][0]


def test_job_reads_uploaded_input_from_s3_and_output_lands_in_tarball(batch_stack):
    content = b"hello batch; $(not a shell) `nor this`\n" * 1000
    record = upload(batch_stack.client, content, "greeting.txt")
    script = ('mkdir -p out && tr a-z A-Z < "$0" > out/upper.txt && echo "stdout: $(wc -c < "$0") bytes" '
              '&& echo "a warning" >&2')
    job_id = submit(batch_stack.client, script, record["uuid"])
    status = wait_state(client_status(batch_stack.client), job_id, timeout=TIMEOUT)
    assert status["state"] == "SUCCESS", status
    assert status["exit_status"] == 0
    files = tarball(batch_stack.client, job_id)
    assert files["out/upper.txt"] == content.upper()
    assert f"stdout: {len(content)} bytes" in files["stdout.log"].decode()     # the CloudWatch log stream
    assert files["stderr.log"].decode().strip() == "a warning"
    assert not any(name.startswith("inputs/") for name in files)               # like a local run
    meta = batch_stack.client.get(f"{API}/job/{job_id}/metadata").get_json()
    sums = Checksums()
    sums.update(content)
    assert meta["inputs"][0]["sha256"] == sums.sha256 == record["sha256"]
    assert meta["inputs"][0]["crc64nvme"] == sums.crc64nvme == record["crc64nvme"]
    outputs = {o["path"]: o for o in meta["outputs"]}
    assert outputs["out/upper.txt"]["sha256"] == hashlib.sha256(content.upper()).hexdigest()
    assert outputs["out/upper.txt"]["crc64nvme"]
    described = batch_job(batch_stack, job_id)
    assert described["status"] == "SUCCEEDED"
    assert described["tags"]["caesar-job-id"] == job_id
    assert described["container"]["command"][-2:] == [script, "inputs/greeting.txt"]      # argv, no shell
    definition = aws("batch", batch_stack.setup.endpoint).describe_job_definitions(
        jobDefinitions=[described["jobDefinition"]])["jobDefinitions"][0]
    assert definition["jobDefinitionName"] == "caesar-bsh-2-1"                 # one per app version
    assert definition["containerProperties"]["image"] == "localhost/caesar-apps:latest"
    assert definition["timeout"]["attemptDurationSeconds"] == 360
    # the job's S3 prefix is gone once the job ended
    prefix = meta["handle"].split("|", 1)[1]
    s3 = aws("s3", batch_stack.setup.endpoint)       # removed after the end is recorded: waited for
    wait_until(lambda: s3.list_objects_v2(Bucket=batch_stack.setup.bucket, Prefix=prefix).get("KeyCount", 0) == 0,
               30, "the job's S3 prefix to be removed")


def test_failing_job_reports_exit_status_and_stderr(batch_stack):
    job_id = submit(batch_stack.client, 'echo partial > part.txt; echo "it broke: no such thing" >&2; exit 3')
    status = wait_state(client_status(batch_stack.client), job_id, timeout=TIMEOUT)
    assert status["state"] == "FAILURE", status
    assert status["exit_status"] == 3              # from the stager's record: moto reports exitCode None
    assert "Process exited with status 3" in status["status"] and "it broke: no such thing" in status["status"]
    files = tarball(batch_stack.client, job_id)
    assert files["part.txt"] == b"partial\n"
    assert batch_job(batch_stack, job_id)["status"] == "FAILED"


def test_shipped_app_runs_on_batch(batch_stack):
    response = batch_stack.client.post(f"{API}/job", json={"app": "checksum", "backend": "batch",
                                                             "job_inputs": {"inputfile": upload(
                                                                 batch_stack.client, b"x", "x.bin")["uuid"]}})
    job_id = response.get_json()["job_id"]
    status = wait_state(client_status(batch_stack.client), job_id, timeout=TIMEOUT)
    # caesar-checksum is in the image: this is a real app run through Batch
    assert status["state"] == "SUCCESS", status
    assert hashlib.sha256(b"x").hexdigest().encode() in tarball(batch_stack.client, job_id)["checksum.txt"]


def test_cancel_terminates_the_batch_job(batch_stack):
    job_id = submit(batch_stack.client, "echo started; sleep 300")
    wait_state(client_status(batch_stack.client), job_id, states=("RUNNING",), timeout=TIMEOUT)
    # wait for the container itself, not only the submission
    deadline = time.time() + TIMEOUT
    while batch_job(batch_stack, job_id)["status"] != "RUNNING" and time.time() < deadline:
        time.sleep(0.5)
    assert batch_stack.client.post(f"{API}/job/{job_id}/cancel").status_code == 200
    status = wait_state(client_status(batch_stack.client), job_id, timeout=60)
    assert status["state"] == "CANCELED", status
    described = batch_job(batch_stack, job_id)
    assert described["status"] == "FAILED"
    assert "Canceled by the caesar-rest user" in described.get("statusReason", "")


def test_health_reports_the_queue(batch_stack):
    assert batch_stack.client.get("/health").get_json()["checks"]["backends"]["batch"]["status"] == "ok"
    body = full_health(batch_stack.client)["backends"]["batch"]
    assert batch_stack.setup.job_queue in str(body), body


def test_time_limit_stops_the_batch_job(batch_stack):
    job_id = submit(batch_stack.client, "echo going; sleep 120", app="bsh-short")
    status = wait_state(client_status(batch_stack.client), job_id, timeout=TIMEOUT)
    assert status["state"] == "TIMED-OUT", status
    assert "time limit of 5 s" in status["status"]
    assert batch_job(batch_stack, job_id)["status"] == "FAILED"


def test_missing_image_fails_the_job(batch_stack):
    response = batch_stack.client.post(f"{API}/job", json={"app": "bsh-noimage", "job_inputs": {}})
    job_id = response.get_json()["job_id"]
    status = wait_state(client_status(batch_stack.client), job_id, timeout=TIMEOUT)
    assert status["state"] == "FAILURE", status
    assert "AWS Batch job" in status["status"] and "FAILED" in status["status"]


def test_succeeded_without_the_stagers_record_is_a_failure(batch_stack):
    """A Batch job that SUCCEEDED without the stager's result record never uploaded its outputs: the backend says
    FAILED with that reason instead of a SUCCESS with an empty job directory. The job here is submitted straight
    to moto (command `true`, no stager), as a container that Batch reports done before it ran would look."""
    from workers.backends.base import FAILED
    from workers.backends.batch import BatchBackend

    options = batch_stack.settings["BACKENDS"]["batch"]
    backend = BatchBackend(batch_stack.settings, options)
    batch = aws("batch", batch_stack.setup.endpoint)
    definition = batch.register_job_definition(
        jobDefinitionName="caesar-test-true", type="container",
        containerProperties={"image": "localhost/caesar-apps:latest", "command": ["true"],
                             "resourceRequirements": [{"type": "VCPU", "value": "1"},
                                                      {"type": "MEMORY", "value": "256"}]})["jobDefinitionArn"]
    batch_id = batch.submit_job(jobName="caesar-test-true", jobQueue=batch_stack.setup.job_queue,
                                jobDefinition=definition)["jobId"]
    deadline = time.time() + TIMEOUT
    while batch.describe_jobs(jobs=[batch_id])["jobs"][0]["status"] not in ("SUCCEEDED", "FAILED"):
        assert time.time() < deadline, "moto did not run the job"
        time.sleep(0.5)
    assert batch.describe_jobs(jobs=[batch_id])["jobs"][0]["status"] == "SUCCEEDED"
    status = backend.poll(f"{batch_id}|{options['prefix']}never-written-{batch_id}/")
    assert status.state == FAILED, status
    assert "SUCCEEDED" in status.reason and "no result record" in status.reason and batch_id in status.reason
