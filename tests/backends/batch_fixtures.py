"""moto's server (scripts/moto.sh: S3, Batch and CloudWatch Logs, Batch jobs as real Podman containers) and an
embedded caesar-rest stack with S3 storage whose real Celery worker runs the batch backend against it."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from caesar_rest import create_app
from caesar_rest.db import dispose_all

from ..support import REPO, Proc, embedded_settings, free_port, start_worker, write_apps as support_write_apps

SCRIPT = REPO / "scripts" / "moto.sh"
APPS_IMAGE = "localhost/caesar-apps:latest"
REGION = "us-east-1"
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

# sh -c SCRIPT [inputs/FILE]: the script sees the staged input as $0 (run by the stager, no shell around it)
TEST_APPS = {"bsh": f"""
name: bsh
version: "2.1"
description: a shell script in the caesar-apps image
command: [sh, -c]
backends: [batch, local]
default_backend: batch
image: {APPS_IMAGE}
resources: {{cpus: 1, memory_mb: 256, time_limit: 300}}
options:
  script: {{type: string, required: true, style: positional}}
  inputfile: {{type: file, style: positional}}
""", "bsh-short": f"""
name: bsh-short
version: "1"
description: a shell script with a 5 s time limit
command: [sh, -c]
backends: [batch]
default_backend: batch
image: {APPS_IMAGE}
resources: {{cpus: 1, memory_mb: 256, time_limit: 5}}
options:
  script: {{type: string, required: true, style: positional}}
""", "bsh-noimage": """
name: bsh-noimage
version: "1"
description: an image that exists nowhere
command: [sh, -c, "echo never"]
backends: [batch]
default_backend: batch
image: localhost/caesar-no-such-image:latest
resources: {cpus: 1, memory_mb: 256, time_limit: 60}
options: {}
"""}


def write_apps(directory: Path) -> Path:
    return support_write_apps(directory, TEST_APPS)


def aws(service: str, endpoint: str):
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION, **CREDS)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory) -> Iterator[str]:
    """moto_server on a free port, started (and stopped) by scripts/moto.sh; Podman comes up with it."""
    state = tmp_path_factory.mktemp("moto")
    env = {**os.environ, "PYTHON": sys.executable}
    try:
        result = subprocess.run(["bash", str(SCRIPT), "start", str(state), str(free_port())], env=env,
                                capture_output=True, text=True, timeout=1500, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/moto.sh did not finish in {exc.timeout} s:\n{exc.stderr}")
    if result.returncode != 0:
        pytest.fail(f"scripts/moto.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-4000:]}")
    url = result.stdout.strip().splitlines()[-1]
    try:
        yield url
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(state)], env=env, timeout=60, check=False)


@dataclass
class AwsSetup:
    endpoint: str
    bucket: str
    job_queue: str


@pytest.fixture(scope="session")
def aws_setup(moto_server) -> AwsSetup:
    """A bucket, and an IAM role → unmanaged compute environment → job queue, with names unique to this run."""
    tag = uuid.uuid4().hex[:8]
    role = aws("iam", moto_server).create_role(RoleName=f"caesar-batch-{tag}", AssumeRolePolicyDocument="{}")
    batch = aws("batch", moto_server)
    env = batch.create_compute_environment(computeEnvironmentName=f"caesar-ce-{tag}", type="UNMANAGED",
                                           state="ENABLED", serviceRole=role["Role"]["Arn"])
    queue = batch.create_job_queue(jobQueueName=f"caesar-q-{tag}", state="ENABLED", priority=1,
                                   computeEnvironmentOrder=[{"order": 1,
                                                             "computeEnvironment": env["computeEnvironmentArn"]}])
    bucket = f"caesar-test-{tag}"
    aws("s3", moto_server).create_bucket(Bucket=bucket)
    return AwsSetup(endpoint=moto_server, bucket=bucket, job_queue=queue["jobQueueName"])


def s3_settings(root: Path, setup: AwsSetup, **extra: Any) -> dict[str, Any]:
    return embedded_settings(
        root / "var", APPS_DIR=str(write_apps(root / "apps")), STORAGE="s3", S3_BUCKET=setup.bucket,
        S3_PREFIX=f"data-{uuid.uuid4().hex[:6]}/", S3_ENDPOINT_URL=setup.endpoint, S3_REGION=REGION,
        S3_ACCESS_KEY_ID=CREDS["aws_access_key_id"], S3_SECRET_ACCESS_KEY=CREDS["aws_secret_access_key"],
        BACKENDS={"local": {}, "batch": {"job_queue": setup.job_queue, "region": REGION,
                                         "endpoint_url": setup.endpoint, "bucket": setup.bucket,
                                         "prefix": "batch/", "settle_timeout": 20}},
        **extra)


@dataclass
class BatchStack:
    settings: dict[str, Any]
    client: Any
    worker: Proc
    setup: AwsSetup


@pytest.fixture(scope="module")
def batch_stack(tmp_path_factory, aws_setup) -> Iterator[BatchStack]:
    """API (Flask test client, S3 storage) + one real worker (2 processes) on the local and batch pools."""
    root = tmp_path_factory.mktemp("batch")
    settings = s3_settings(root, aws_setup)
    app = create_app(settings)
    worker = start_worker(settings, ["local", "batch"], root / "worker.log", concurrency=2)
    try:
        yield BatchStack(settings=settings, client=app.test_client(), worker=worker, setup=aws_setup)
    finally:
        worker.stop()
        dispose_all()
