"""AWS Batch backend: jobs run as Batch container jobs (boto3), inputs and outputs travel through S3."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import secrets
import shutil
import tarfile
import tempfile
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from caesar_rest import images, s3store

from .base import (
    EXITED,
    FAILED,
    LOST,
    QUEUED,
    RUNNING,
    BackendBase,
    BackendError,
    BackendNotConfigured,
    BackendStatus,
    BackendUnavailable,
    JobSpec,
    translate_errors,
)

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, ConnectionError as BotoConnectionError
except ImportError as exc:          # the `batch` extra
    raise ImportError(f"the AWS Batch backend needs boto3: pip install 'caesar-rest[batch]' ({exc})") from exc

log = logging.getLogger("caesar.backends.batch")

STAGER = (Path(__file__).with_name("batch_stager.py")).read_text(encoding="utf-8")
STAGER_HASH = hashlib.sha256(STAGER.encode()).hexdigest()[:12]
_WAITING = {"SUBMITTED", "PENDING", "RUNNABLE", "STARTING"}
_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_PRESIGN = 7 * 24 * 3600            # SigV4's longest validity
_TRANSIENT = {"Throttling", "ThrottlingException", "TooManyRequestsException", "ServiceUnavailable",
              "ServerException", "InternalError", "RequestTimeout", "SlowDown"}


class BatchBackend(BackendBase):
    """Submits each job to an AWS Batch queue; a job definition per app version (image, vCPUs, memory, timeout).

    Settings, BACKENDS["batch"]:
        job_queue (required), region (us-east-1), endpoint_url (Batch, Logs and S3; moto's server in tests)
        bucket (required), prefix ("caesar/batch/"): where each job's inputs, manifest and outputs live
        s3_endpoint_url: S3 endpoint if not endpoint_url / S3_ENDPOINT_URL
        job_s3_endpoint_url: the S3 endpoint as the containers see it (presigned URLs); default the same
        access_key_id, secret_access_key: default S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY, else boto3's chain
        default_memory_mb (2048), log_group ("/aws/batch/job"), queue_allowance (86400 s a job may wait
        in the queue: its manifest and input URLs expire then, its output URLs that long after its time limit),
        settle_timeout (20 s to wait for a stopped job's logs)
    The container runs `python3 -c <batch_stager.py> <manifest URL> -- <argv>`: the image needs python3 (the
    caesar-apps image has it) and network access to S3, no AWS credentials (every URL is presigned; the job
    definition has no job role).
    What one job may reach of another's is nothing: each job's objects live under a key prefix of 128 random bits
    (nothing in it derives from the job id), its URLs name only its own objects and go only into its own command
    and manifest, and the stager deletes the manifest and each input as soon as it has read them, so a leaked
    manifest or input URL is dead once the job has started.
    The handle is "<Batch job id>|<S3 key prefix>".
    """

    name: ClassVar[str] = "batch"
    blocking: ClassVar[bool] = False
    runs_images: ClassVar[bool] = True      # ALLOWED_IMAGES applies to its jobs (caesar_rest.images)
    job_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.settings = settings
        self.queue: str = options.get("job_queue") or ""
        self.bucket: str = options.get("bucket") or ""
        if not self.queue or not self.bucket:
            raise BackendNotConfigured("BACKENDS.batch needs 'job_queue' and 'bucket'")
        s3store.require_crc()
        self.prefix = str(options.get("prefix", "caesar/batch/"))
        self.region = options.get("region") or settings.get("S3_REGION") or "us-east-1"
        self.default_memory_mb = int(options.get("default_memory_mb") or 2048)
        self.log_group = options.get("log_group") or "/aws/batch/job"
        self.queue_allowance = float(options.get("queue_allowance", 86400))
        self.settle_timeout = float(options.get("settle_timeout", 20))
        endpoint = options.get("endpoint_url") or None
        s3_endpoint = options.get("s3_endpoint_url") or endpoint or settings.get("S3_ENDPOINT_URL") or None
        creds = {"aws_access_key_id": options.get("access_key_id") or settings.get("S3_ACCESS_KEY_ID") or None,
                 "aws_secret_access_key":
                     options.get("secret_access_key") or settings.get("S3_SECRET_ACCESS_KEY") or None}
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60)
        self.batch = boto3.client("batch", endpoint_url=endpoint, region_name=self.region, config=config, **creds)
        self.logs = boto3.client("logs", endpoint_url=endpoint, region_name=self.region, config=config, **creds)
        s3_config = Config(s3={"addressing_style": "path"}, signature_version="s3v4", connect_timeout=10,
                           read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                           request_checksum_calculation="when_required", response_checksum_validation="when_required")
        self.s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name=self.region, config=s3_config, **creds)
        job_endpoint = options.get("job_s3_endpoint_url") or s3_endpoint
        self.signer = self.s3 if job_endpoint == s3_endpoint else boto3.client(
            "s3", endpoint_url=job_endpoint, region_name=self.region, config=s3_config, **creds)
        self.definitions: dict[tuple, str] = {}
        self.results: dict[str, dict[str, Any]] = {}

    def health(self) -> dict[str, Any]:
        """The job queue is ENABLED and VALID and the staging bucket answers (GET /health)."""
        with self._errors("checking its health"):
            queues = self.batch.describe_job_queues(jobQueues=[self.queue]).get("jobQueues") or []
            self.s3.head_bucket(Bucket=self.bucket)
        if not queues:
            raise BackendError(f"AWS Batch job queue {self.queue!r} does not exist")
        queue = queues[0]
        if queue.get("state") != "ENABLED":
            raise BackendError(f"AWS Batch job queue {self.queue!r} is {queue.get('state')}")
        return {"job_queue": self.queue, "queue_status": queue.get("status"), "bucket": self.bucket}

    # ---- Backend protocol -------------------------------------------------------------------------------------
    def submit(self, job: JobSpec) -> str:
        if not job.argv:
            raise BackendError("the job has an empty command")
        if not job.image:
            raise BackendError(f"app {job.app!r} names no container image; the batch backend runs containers")
        problem = images.refusal(self.settings, job.image)
        if problem:
            raise BackendError(problem)
        key_prefix = f"{self.prefix}{secrets.token_hex(16)}/"
        # What the job reads is read when it starts; what it writes, at most its time limit later.
        start_by = int(min(_MAX_PRESIGN, max(60.0, self.queue_allowance)))
        expiry = int(min(_MAX_PRESIGN, (job.time_limit_s or 86400) + self.queue_allowance))
        with self._errors("staging the inputs in S3"):
            inputs = []
            for item in job.inputs:
                rel = _relative(item.relpath)
                key = f"{key_prefix}{rel}"
                sums = s3store.checksums_of(Path(job.workdir) / rel)
                self.s3.upload_file(str(Path(job.workdir) / rel), self.bucket, key, ExtraArgs={
                    "Metadata": {"sha256": sums.sha256, "crc64nvme": sums.crc64nvme or ""}})
                inputs.append({"path": rel, "sha256": sums.sha256, "size": sums.size,
                               "url": self._presign("get_object", key, start_by),
                               "delete_url": self._presign("delete_object", key, start_by)})
            manifest_key = f"{key_prefix}manifest.json"
            manifest = {"inputs": inputs, "env": {**job.env, "CAESAR_JOB_ID": job.job_id},
                        "delete_url": self._presign("delete_object", manifest_key, start_by),
                        "outputs_url": self._presign("put_object", f"{key_prefix}outputs.tar.gz", expiry),
                        "result_url": self._presign("put_object", f"{key_prefix}result.json", expiry)}
            self.s3.put_object(Bucket=self.bucket, Key=manifest_key, Body=json.dumps(manifest).encode())
            manifest_url = self._presign("get_object", manifest_key, start_by)
        handle_prefix = key_prefix
        try:
            definition = self._definition(job)
            limit = max(60, int(job.time_limit_s or 86400) + 60)    # a backstop: the runner stops the job first
            with self._errors("submitting the job"):
                answer = self.batch.submit_job(
                    jobName=_name(f"caesar-{job.app}-{job.job_id}"), jobQueue=self.queue, jobDefinition=definition,
                    containerOverrides={"command": ["python3", "-c", STAGER, manifest_url, "--", *map(str, job.argv)],
                                        "environment": [{"name": "CAESAR_JOB_ID", "value": job.job_id}]},
                    timeout={"attemptDurationSeconds": limit},
                    tags={"caesar-job-id": job.job_id, "caesar-owner": job.owner, "caesar-app": job.app})
        except Exception:
            self._remove_prefix(handle_prefix)
            raise
        log.info("job %s submitted to AWS Batch queue %s as %s", job.job_id, self.queue, answer["jobId"])
        return f"{answer['jobId']}|{key_prefix}"

    def poll(self, handle: str) -> BackendStatus:
        batch_id, key_prefix = _split(handle)
        described = self._describe(batch_id)
        if described is None:
            return BackendStatus(LOST, reason=f"AWS Batch does not know job {batch_id} any more")
        status = described.get("status")
        if status in _WAITING:
            return BackendStatus(QUEUED)
        if status == "RUNNING":
            return BackendStatus(RUNNING)
        result = self._result(handle, key_prefix)
        exit_code = result.get("exit_code") if isinstance(result.get("exit_code"), int) else None
        if result.get("error"):
            return BackendStatus(FAILED, reason=f"Staging inside the AWS Batch job failed: {result['error']}")
        if status == "SUCCEEDED":
            if exit_code is None:
                # The stager writes its record before it exits 0: without one the program did not run to its end
                # (the container was stopped from outside, or its command replaced), and no outputs were uploaded.
                return BackendStatus(FAILED, reason=f"AWS Batch reports job {batch_id} SUCCEEDED, but the job left "
                                                    "no result record in S3: its program did not run to the end "
                                                    "and its outputs were never uploaded")
            return BackendStatus(EXITED, exit_code=exit_code)
        if exit_code is not None and exit_code != 0:
            return BackendStatus(EXITED, exit_code=exit_code)
        # No record from the stager (it was killed, or never started): what Batch says, exit code where known.
        container = described.get("container") or {}
        attempts = described.get("attempts") or [{}]
        batch_rc = container.get("exitCode", (attempts[-1].get("container") or {}).get("exitCode"))
        reason = described.get("statusReason") or container.get("reason") or "no reason given"
        return BackendStatus(FAILED, exit_code=batch_rc if isinstance(batch_rc, int) else None,
                             reason=f"AWS Batch job {batch_id} FAILED: {reason}"
                                    f"{f' (exit code {batch_rc})' if isinstance(batch_rc, int) else ''}")

    def cancel(self, handle: str) -> None:
        batch_id, _ = _split(handle)
        with self._errors("terminating the job"):
            self.batch.terminate_job(jobId=batch_id, reason="Canceled by the caesar-rest user")

    def fetch_outputs(self, handle: str, dest: Path) -> None:
        batch_id, key_prefix = _split(handle)
        described = self._settle(batch_id)
        dest = Path(dest)
        result = self._result(handle, key_prefix)
        with tempfile.TemporaryDirectory(prefix="caesar-batch-") as tmp:
            tarball = Path(tmp) / "outputs.tar.gz"
            if self._get(f"{key_prefix}outputs.tar.gz", tarball):
                _extract(tarball, dest)
        for rel, expected in (result.get("files") or {}).items():
            path = dest / _relative(rel)
            actual = s3store.checksums_of(path).sha256 if path.is_file() else "missing"
            if actual != expected:
                raise BackendError(f"output file {rel} does not match the sha256 the job computed "
                                   f"({expected[:12]}…, fetched {actual[:12]}…)")
        stream = ((described or {}).get("container") or {}).get("logStreamName")
        with open(dest / "stdout.log", "w", encoding="utf-8") as out:
            if stream:
                self._write_log(stream, out)
        (dest / "stderr.log").touch()

    def cleanup(self, handle: str) -> None:
        _, key_prefix = _split(handle)
        self._remove_prefix(key_prefix)
        self.results.pop(handle, None)

    # ---- helpers ----------------------------------------------------------------------------------------------
    def _definition(self, job: JobSpec) -> str:
        """The ARN of an ACTIVE job definition for this app version and resources; registered when missing."""
        version = job.app_version or ""
        vcpus = max(1, math.ceil(job.cpus or 1))
        memory = int(job.memory_mb or self.default_memory_mb)
        timeout = max(60, int(job.time_limit_s or 86400) + 60)
        name = _name(f"caesar-{job.app}-{version}" if version else f"caesar-{job.app}")
        key = (name, job.image, vcpus, memory, timeout)
        if key in self.definitions:
            return self.definitions[key]
        wanted = {"image": job.image, "vcpus": vcpus, "memory": memory, "timeout": timeout, "stager": STAGER_HASH}
        with self._errors("looking up the job definition"):
            for page in self.batch.get_paginator("describe_job_definitions").paginate(jobDefinitionName=name,
                                                                                      status="ACTIVE"):
                for existing in page.get("jobDefinitions") or []:
                    if _definition_shape(existing) == wanted:
                        self.definitions[key] = existing["jobDefinitionArn"]
                        return existing["jobDefinitionArn"]
            arn = self.batch.register_job_definition(
                jobDefinitionName=name, type="container", timeout={"attemptDurationSeconds": timeout},
                parameters={}, tags={"caesar-app": job.app, "caesar-app-version": version or "",
                                     "caesar-stager": STAGER_HASH},
                containerProperties={"image": job.image, "command": ["python3", "-c", STAGER],
                                     "resourceRequirements": [{"type": "VCPU", "value": str(vcpus)},
                                                              {"type": "MEMORY", "value": str(memory)}]},
            )["jobDefinitionArn"]
        log.info("registered AWS Batch job definition %s for %s", arn, job.image)
        self.definitions[key] = arn
        return arn

    def _presign(self, method: str, key: str, expiry: int) -> str:
        return self.signer.generate_presigned_url(method, Params={"Bucket": self.bucket, "Key": key},
                                                  ExpiresIn=expiry)

    def _describe(self, batch_id: str) -> dict[str, Any] | None:
        with self._errors("asking the job's status"):
            jobs = self.batch.describe_jobs(jobs=[batch_id]).get("jobs") or []
        return jobs[0] if jobs else None

    def _settle(self, batch_id: str) -> dict[str, Any] | None:
        """The job's description once Batch has stopped it (a terminated job takes a moment; its logs come last)."""
        deadline = time.monotonic() + self.settle_timeout
        while True:
            described = self._describe(batch_id)
            if described is None or described.get("status") in ("SUCCEEDED", "FAILED") \
                    or time.monotonic() > deadline:
                return described
            time.sleep(0.5)

    def _result(self, handle: str, key_prefix: str) -> dict[str, Any]:
        """The stager's record (exit status, output checksums), {} when it wrote none."""
        if handle not in self.results:
            try:
                body = self.s3.get_object(Bucket=self.bucket, Key=f"{key_prefix}result.json")["Body"].read()
                self.results[handle] = json.loads(body)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                    raise _translate(exc, "reading the job's result") from exc
                return {}
            except ValueError:
                return {}
        return self.results[handle]

    def _get(self, key: str, target: Path) -> bool:
        """Stream an object into target; False when it does not exist."""
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return False
            raise _translate(exc, f"downloading {key}") from exc
        with self._errors(f"downloading {key}"), open(target, "wb") as out:
            for block in body.iter_chunks(s3store.CHUNK):
                out.write(block)
        return True

    def _write_log(self, stream: str, out) -> None:
        token = None
        with self._errors("reading the job's log"):
            while True:
                kwargs: dict[str, str] = {"nextToken": token} if token else {}
                page = self.logs.get_log_events(logGroupName=self.log_group, logStreamName=stream,
                                                startFromHead=True, **kwargs)
                for event in page.get("events") or []:
                    out.write(f"{event.get('message', '')}\n")
                if not page.get("events") or page.get("nextForwardToken") in (None, token):
                    return
                token = page["nextForwardToken"]

    def _remove_prefix(self, key_prefix: str) -> None:
        with self._errors("removing the job's S3 objects"):
            s3store.delete_prefix(self.s3, self.bucket, key_prefix)

    @staticmethod
    def _errors(what: str) -> AbstractContextManager[None]:
        """boto3's, S3's and the file system's errors in the block become BackendError naming what was being done."""
        return translate_errors((ClientError, BotoCoreError, OSError, s3store.StorageError),
                                lambda exc: _translate(exc, what))


def _translate(exc: Exception, what: str) -> BackendError:
    """BackendUnavailable (retried) for what heals by waiting: throttling, 5xx, a connection; else BackendError.
    Classified by AWS's error code, not its message."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        text = f"AWS {err.get('Code', '?')}: {err.get('Message') or exc}"
        if err.get("Code") in _TRANSIENT or status >= 500:
            return BackendUnavailable(f"AWS Batch backend failed while {what}: {text}")
        return BackendError(f"AWS Batch backend failed while {what}: {text}")
    if isinstance(exc, (BotoConnectionError, BotoCoreError)):
        return BackendUnavailable(f"AWS Batch backend failed while {what}: {exc}")
    return BackendError(f"AWS Batch backend failed while {what}: {exc.__class__.__name__}: {exc}")


def _definition_shape(definition: Mapping[str, Any]) -> dict[str, Any]:
    props = definition.get("containerProperties") or {}
    resources = {r.get("type"): r.get("value") for r in props.get("resourceRequirements") or []}
    return {"image": props.get("image"), "vcpus": int(resources.get("VCPU") or props.get("vcpus") or 0),
            "memory": int(resources.get("MEMORY") or props.get("memory") or 0),
            "timeout": (definition.get("timeout") or {}).get("attemptDurationSeconds"),
            "stager": (definition.get("tags") or {}).get("caesar-stager")}


def _name(text: str) -> str:
    return _NAME_BAD.sub("-", text).strip("-")[:128] or "caesar"


def _split(handle: str) -> tuple[str, str]:
    batch_id, sep, key_prefix = handle.partition("|")
    if not sep or not batch_id or not key_prefix:
        raise BackendError(f"{handle!r} is not an AWS Batch job handle")
    return batch_id, key_prefix


def _relative(path: str) -> str:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or path != pure.as_posix():
        raise BackendError(f"path {path!r} is not a plain relative path inside the job directory")
    return path


def _extract(tarball: Path, dest: Path) -> None:
    """The job's outputs into dest: regular files and directories only, never outside dest nor into inputs/."""
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            rel = _relative(member.name)
            if PurePosixPath(rel).parts[0] == "inputs":
                continue
            target = dest / rel
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise BackendError(f"the job's outputs hold {rel!r}, which cannot be read")
                with open(target, "wb") as out:
                    shutil.copyfileobj(source, out, s3store.CHUNK)
            else:
                raise BackendError(f"the job's outputs hold {rel!r}, which is not a regular file or directory")
