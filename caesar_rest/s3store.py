"""S3 storage of uploaded files (streamed both ways, through multipart uploads) and of archived job directories,
each object carrying our own sha256 and CRC64NVME (caesar_rest.checksums) as metadata."""
from __future__ import annotations

import threading
import uuid as uuidlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from . import s3errors
from .checksums import CHUNK, BackgroundChecksums, Checksums, checksums_of, mismatch, output_manifest, require_crc  # noqa: F401 (the runner and job_dir use s3store.<name>)
from .errors import BadRequest, InsufficientStorage, NotFound, StorageError, StorageUnavailable
from .s3errors import describe_error
from .sinks import WriteSink

MIN_PART = 5 * 1024 * 1024          # S3's smallest multipart part (but the last)

# ---- S3 ------------------------------------------------------------------------------------------------------
def is_s3(path: str) -> bool:
    return path.startswith("s3://")


def split_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.netloc, unquote(parts.path.lstrip("/"))


def make_client(settings: Mapping[str, Any], endpoint_url: str | None = None, region: str | None = None,
                timeout: float = 60.0):
    """An S3 client from the S3_* settings (the ones TES s3:// transfers use), path-style addressing."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ImportError(f"S3 storage needs boto3: pip install 'caesar-rest[s3]' ({exc})") from exc
    # Checksums only where S3 requires them: we compute and verify our own, look-alikes disagree on the rest.
    config = Config(s3={"addressing_style": "path"}, connect_timeout=timeout, read_timeout=timeout,
                    retries={"max_attempts": 3, "mode": "standard"}, signature_version="s3v4",
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return boto3.client("s3", endpoint_url=endpoint_url or settings.get("S3_ENDPOINT_URL") or None,
                        aws_access_key_id=settings.get("S3_ACCESS_KEY_ID") or None,
                        aws_secret_access_key=settings.get("S3_SECRET_ACCESS_KEY") or None,
                        region_name=region or settings.get("S3_REGION") or None, config=config)


class S3Store:
    """Uploaded files as objects s3://<S3_BUCKET>/<S3_PREFIX><owner>/<uuid>.<format>."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.bucket = settings.get("S3_BUCKET")
        if not self.bucket:
            raise StorageError("STORAGE is 's3' but S3_BUCKET is not set")
        self.prefix = str(settings.get("S3_PREFIX") or "")
        self.part_bytes = max(MIN_PART, int(settings.get("S3_PART_BYTES") or 8 * 1024 * 1024))
        self.presign_expiry = int(settings.get("S3_PRESIGN_EXPIRY") or 3600)
        require_crc()
        self.client = make_client(settings)

    def url_for(self, owner: str, file_uuid: str, fmt: str) -> str:
        return f"s3://{self.bucket}/{quote(self.prefix + owner + '/' + file_uuid + '.' + fmt, safe='/')}"

    def open_stream(self, url: str) -> tuple[Iterator[bytes], int]:
        """The object's bytes in blocks, and its length; NotFound when it is gone."""
        bucket, key = split_url(url)
        try:
            answer = self.client.get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if s3errors.classify(exc) == s3errors.MISSING_KEY:
                raise NotFound("The file is registered but its data is missing from S3 storage") from exc
            raise StorageUnavailable(f"S3 storage failed reading the file: {describe_error(exc)}") from exc
        body = answer["Body"]

        def blocks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()

        return blocks(), int(answer["ContentLength"])

    def download(self, url: str, dest: Path) -> Checksums:
        """Stream the object into dest, returning the checksums of what was written."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.part")
        sums = Checksums()
        try:
            blocks, length = self.open_stream(url)
        except (NotFound, StorageUnavailable) as exc:
            raise StorageError(f"{url}: {exc.message}") from exc
        try:
            with open(partial, "wb") as out:
                for block in blocks:
                    out.write(block)
                    sums.update(block)
        except Exception as exc:
            partial.unlink(missing_ok=True)
            raise StorageError(f"reading {url}: {describe_error(exc)}") from exc
        if sums.size != length:
            partial.unlink(missing_ok=True)
            raise StorageError(f"reading {url}: got {sums.size} of {length} bytes")
        partial.replace(dest)
        return sums

    def presign(self, url: str, filename: str) -> str:
        bucket, key = split_url(url)
        disposition = f"attachment; filename*=UTF-8''{quote(filename, safe='')}"
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key, "ResponseContentDisposition": disposition},
            ExpiresIn=self.presign_expiry)

    def delete(self, url: str) -> None:
        bucket, key = split_url(url)
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise StorageUnavailable(f"S3 storage failed deleting the file: {describe_error(exc)}") from exc


def job_prefix(store: S3Store, owner: str, job_id: str) -> str:
    return f"{store.prefix}jobs/{owner}/{job_id}/"


def upload_job_dir(store: S3Store, owner: str, job_id: str, workdir: Path,
                   manifest: list[dict[str, Any]] | None = None) -> str:
    """Copy a finished job's directory into S3 (each object with our sha256 and CRC64NVME, from the job's output
    manifest when given), inputs, tmp and caesar_job.json left out. Returns the s3:// URL of the job's prefix.
    The local directory is left alone: its owner removes it once the job's end names this copy."""
    prefix = job_prefix(store, owner, job_id)
    for item in manifest if manifest is not None else output_manifest(workdir):
        rel = item["path"]
        metadata = {"sha256": item["sha256"], **({"crc64nvme": item["crc64nvme"]} if item.get("crc64nvme") else {})}
        try:
            store.client.upload_file(str(workdir / rel), store.bucket, prefix + rel, ExtraArgs={"Metadata": metadata})
        except Exception as exc:
            raise StorageError(f"archiving {rel} of job {job_id} to S3 failed: {describe_error(exc)}") from exc
    return f"s3://{store.bucket}/{prefix}"


def put_job_file(store: S3Store, url: str, name: str, data: bytes) -> None:
    """One small object (caesar_job.json) into an archived job's prefix."""
    bucket, prefix = split_url(url)
    sums = Checksums()
    sums.update(data)
    metadata = {"sha256": sums.sha256, **({"crc64nvme": sums.crc64nvme} if sums.crc64nvme else {})}
    try:
        store.client.put_object(Bucket=bucket, Key=prefix + name, Body=data, Metadata=metadata)
    except Exception as exc:
        raise StorageError(f"writing {name} to S3 failed: {describe_error(exc)}") from exc


def delete_prefix(client, bucket: str, prefix: str) -> None:
    """Remove every object under prefix, a page (at most 1,000 keys) at a time."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents") or []]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def delete_job_dir(store: S3Store, url: str) -> None:
    """Remove every object of an archived job."""
    try:
        delete_prefix(store.client, *split_url(url))
    except Exception as exc:
        raise StorageUnavailable(f"S3 storage failed deleting the job's outputs: {describe_error(exc)}") from exc


def job_objects(store: S3Store, url: str) -> Iterator[dict[str, Any]]:
    """Every object of an archived job (Key, Size, LastModified), in key order."""
    bucket, prefix = split_url(url)
    try:
        for page in store.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            yield from page.get("Contents", [])
    except Exception as exc:
        raise StorageUnavailable(f"S3 storage failed listing the job's outputs: {describe_error(exc)}") from exc


def read_tail(store: S3Store, url: str, name: str, max_bytes: int) -> bytes:
    """The last max_bytes of one object of an archived job; b"" when it does not exist."""
    bucket, prefix = split_url(url)
    try:
        head = store.client.head_object(Bucket=bucket, Key=prefix + name)
    except Exception as exc:
        if s3errors.classify(exc) == s3errors.MISSING_KEY:
            return b""
        raise StorageUnavailable(f"S3 storage failed reading {name}: {describe_error(exc)}") from exc
    start = max(0, int(head["ContentLength"]) - max_bytes)
    if int(head["ContentLength"]) == 0:
        return b""
    try:
        answer = store.client.get_object(Bucket=bucket, Key=prefix + name, Range=f"bytes={start}-")
        return answer["Body"].read()
    except Exception as exc:
        raise StorageUnavailable(f"S3 storage failed reading {name}: {describe_error(exc)}") from exc


_stores: dict[int, S3Store] = {}
_stores_lock = threading.Lock()


def store_for(settings: Mapping[str, Any]) -> S3Store:
    """One store (one boto3 client: thread-safe) per settings object in this process."""
    with _stores_lock:
        if id(settings) not in _stores:
            _stores[id(settings)] = S3Store(settings)
        return _stores[id(settings)]


class S3UploadSink(WriteSink):
    """The S3 twin of storage.UploadSink: the upload's file part is written here as it arrives; full parts go
    out as they fill (multipart upload), so memory holds one part at most, and the checksums are computed on
    their own thread meanwhile. Small files become a single PUT at commit."""

    def __init__(self, store: S3Store, owner: str, fmt: str, limit: int | None = None,
                 uuid: str | None = None) -> None:
        self.store = store
        self.uuid = uuid or uuidlib.uuid4().hex
        self.url = store.url_for(owner, self.uuid, fmt)
        self.bucket, self.key = split_url(self.url)
        self.limit = limit
        self._sums = BackgroundChecksums()
        self.size = 0
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self.error: Exception | None = None
        self.done = False

    def write(self, data) -> int:
        n = len(data)
        self.size += n
        if self.error is not None or (self.limit is not None and self.size > self.limit):
            return n                        # keep draining the request; the API reports afterwards (413, 503)
        self._sums.update(data)
        self._buffer += data
        if len(self._buffer) >= self.store.part_bytes:
            self._send_part()
        return n

    def _send_part(self) -> None:
        try:
            client = self.store.client
            if self._upload_id is None:
                self._upload_id = client.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
            number = len(self._parts) + 1
            answer = client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id,
                                        PartNumber=number, Body=bytes(self._buffer))
            self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        except Exception as exc:
            self.error = exc
        self._buffer = bytearray()

    def close(self) -> None:
        pass

    def commit(self) -> None:
        """Make the object visible (complete the multipart upload, or one PUT), our checksums as metadata."""
        metadata = {"sha256": self.sha256, "crc64nvme": self.crc64nvme or ""}
        client = self.store.client
        if self.error is None:
            try:
                if self._upload_id is None:
                    client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self._buffer), Metadata=metadata)
                else:
                    if self._buffer:
                        self._send_part()
                    if self.error is None:
                        client.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id,
                                                         MultipartUpload={"Parts": self._parts})
                        # Metadata cannot ride on completion; a self-copy (server side) attaches it.
                        client.copy_object(Bucket=self.bucket, Key=self.key, Metadata=metadata,
                                           MetadataDirective="REPLACE",
                                           CopySource={"Bucket": self.bucket, "Key": self.key})
            except Exception as exc:
                self.error = exc
        self._buffer = bytearray()
        if self.error is not None:
            problem = describe_error(self.error)
            self.discard()
            if s3errors.classify(self.error) == s3errors.TOO_LARGE:
                raise InsufficientStorage(f"S3 storage refused the upload: {problem}")
            raise StorageUnavailable(f"S3 storage failed storing the upload: {problem}")
        self.done = True

    def discard(self) -> None:
        self._buffer = bytearray()
        try:
            self._sums.finish()             # ends the checksum thread
        except Exception:
            pass
        try:
            if self._upload_id is not None and not self.done:
                self.store.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id)
            elif self.done:
                self.store.client.delete_object(Bucket=self.bucket, Key=self.key)
        except Exception:
            pass                            # lifecycle rules clean up abandoned multipart uploads
        self._upload_id = None


def check_presign_arg(value: str | None) -> str | None:
    """?presign=1 (redirect) or ?presign=json (the URL in JSON); None when absent or off."""
    if value in (None, "", "0", "false"):
        return None
    if value in ("1", "true", "redirect"):
        return "redirect"
    if value == "json":
        return "json"
    raise BadRequest(f"'presign' must be 1 (redirect) or json, not {value!r}", field="presign")

