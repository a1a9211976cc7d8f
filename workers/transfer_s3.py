"""TES s3:// transfers: objects and prefixes, read and written with the keys caesar_rest.tes_access grants the task's
owner (an open bucket's, the owner's own, or none: unsigned), never the service's; S3 errors reported by their code."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from caesar_rest import s3errors
from caesar_rest.tes_access import READ, WRITE, S3Access, s3_access
from caesar_rest.tes_task import DIRECTORY

from .transfer_base import CHUNK, MeteredCopy, TransferError, safe_rel


class S3Transfers(MeteredCopy):
    """The s3:// side of workers.transfer.Transfers, which sets these attributes."""

    settings: Mapping[str, Any]
    owner: str
    timeout: float
    _s3: dict[tuple[Any, ...], Any]

    def _client(self, where: S3Access):
        """A client for where's endpoint and keys (none: unsigned requests). Never the service's own keys, nor
        boto3's credential chain, which would find the worker's (environment, ~/.aws, instance role)."""
        cache = (where.endpoint_url, where.region, where.access_key_id, where.secret_access_key, where.session_token)
        if cache not in self._s3:
            try:
                import boto3
                from botocore import UNSIGNED
                from botocore.config import Config
            except ImportError as exc:
                raise TransferError("s3://", "boto3 is not installed: pip install 'caesar-rest[s3]'") from exc
            # Checksums only where S3 requires them: S3 look-alikes disagree with boto3's default CRCs.
            options: dict[str, Any] = dict(
                s3={"addressing_style": "path"}, connect_timeout=self.timeout, read_timeout=self.timeout,
                retries={"max_attempts": 3, "mode": "standard"},
                request_checksum_calculation="when_required", response_checksum_validation="when_required")
            if not where.access_key_id:
                options["signature_version"] = UNSIGNED
            session = boto3.session.Session(aws_access_key_id=where.access_key_id or None,
                                            aws_secret_access_key=where.secret_access_key or None,
                                            aws_session_token=where.session_token or None,
                                            region_name=where.region or "us-east-1")
            self._s3[cache] = session.client("s3", endpoint_url=where.endpoint_url or None, config=Config(**options))
        return self._s3[cache]

    @contextmanager
    def _s3_errors(self, url: str) -> Iterator[None]:
        """boto3's and botocore's errors as a TransferError: S3's code and message when it answered."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, Boto3Error, BotoCoreError) as exc:     # upload_file's Boto3Error wraps the ClientError
            raise TransferError(url, s3errors.describe(exc) or f"S3: {exc}") from exc

    def _s3_in(self, url: str, dest: Path, kind: str) -> int:
        where = s3_access(self.settings, self.owner, url, READ, kind == DIRECTORY)
        bucket, key = where.bucket, where.key
        client = self._client(where)
        with self._s3_errors(url):
            if kind != DIRECTORY:
                return self._s3_get(client, url, bucket, key, dest)
            prefix = key.rstrip("/") + "/" if key.strip("/") else ""
            dest.mkdir(parents=True, exist_ok=True)
            total = 0
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents") or []:
                    if obj["Key"].endswith("/"):
                        continue          # a "folder" marker
                    rel = safe_rel(url, obj["Key"][len(prefix):])
                    total += self._s3_get(client, url, bucket, obj["Key"], dest / rel)
            return total

    def _s3_get(self, client, url: str, bucket: str, key: str, dest: Path) -> int:
        answer = client.get_object(Bucket=bucket, Key=key)
        body = answer["Body"]
        try:
            self._count(url, answer.get("ContentLength"))
            written = self._copy(url, iter(lambda: body.read(CHUNK), b""), dest)
        finally:
            body.close()
        return self._expect(url, written, answer.get("ContentLength"))

    def _s3_out(self, path: Path, url: str) -> int:
        where = s3_access(self.settings, self.owner, url, WRITE, False)
        bucket, key = where.bucket, where.key
        size = path.stat().st_size
        client = self._client(where)
        with self._s3_errors(url):
            client.upload_file(str(path), bucket, key, Callback=lambda _n: self._check_stop(url))
            return self._expect(url, int(client.head_object(Bucket=bucket, Key=key)["ContentLength"]), size)
