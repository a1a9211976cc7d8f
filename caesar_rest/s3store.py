"""S3 storage of uploaded files (streamed both ways) and the end-to-end checksums every stored file carries:
sha256 and CRC64NVME (the CRC S3 itself uses; computed by us with awscrt, never trusted from the server)."""
from __future__ import annotations

import base64
import hashlib
import threading
import uuid as uuidlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from .errors import BadRequest, CaesarError, InsufficientStorage, NotFound, ServiceUnavailable
from .sinks import WriteSink

CHUNK = 1024 * 1024
MIN_PART = 5 * 1024 * 1024          # S3's smallest multipart part (but the last)


class StorageError(CaesarError):
    """An S3 operation failed; str() says which object and why."""


class StorageUnavailable(ServiceUnavailable):
    """An S3 operation behind an API request failed: 503 with the reason."""


# ---- checksums ---------------------------------------------------------------------------------------------
try:
    from awscrt.checksums import crc64nvme as _crc64nvme
except ImportError:                         # the s3 / batch / test extras: without it files carry sha256 only
    _crc64nvme = None


def require_crc() -> None:
    if _crc64nvme is None:
        raise ImportError("CRC64NVME checksums need awscrt: pip install 'caesar-rest[s3]'")


def crc64nvme_b64(value: int) -> str:
    """The CRC as S3 shows it (x-amz-checksum-crc64nvme): base64 of the 8 big-endian bytes."""
    return base64.b64encode(value.to_bytes(8, "big")).decode("ascii")


class Checksums:
    """sha256 and CRC64NVME of a byte stream, fed in blocks."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._crc = 0
        self.size = 0

    def update(self, data: bytes) -> None:
        self._sha.update(data)
        if _crc64nvme is not None:
            self._crc = _crc64nvme(data, self._crc)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def crc64nvme(self) -> str | None:
        return crc64nvme_b64(self._crc) if _crc64nvme is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {"size_bytes": self.size, "sha256": self.sha256, "crc64nvme": self.crc64nvme}


class BackgroundChecksums(Checksums):
    """Checksums computed on a thread of their own while the caller goes on writing: sha256 releases the GIL
    on big blocks, so hashing runs beside the socket reads and disk writes instead of after each of them.
    update() takes blocks that do not change afterwards (bytes, or memoryviews of bytes); at most `depth`
    blocks wait (the memory held is bounded). Reading a checksum waits for the thread to finish."""

    _DONE = object()

    def __init__(self, depth: int = 8) -> None:
        import queue

        super().__init__()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="checksums", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._queue.get()) is not self._DONE:
            if self._error is None:
                try:
                    Checksums.update(self, block)
                except BaseException as exc:     # noqa: BLE001 - re-raised in the caller's thread by finish()
                    self._error = exc

    def update(self, data) -> None:
        self._queue.put(data)

    def finish(self) -> None:
        if self._thread.is_alive():
            self._queue.put(self._DONE)
            self._thread.join()
        if self._error is not None:
            raise self._error

    @property
    def sha256(self) -> str:
        self.finish()
        return super().sha256

    @property
    def crc64nvme(self) -> str | None:
        self.finish()
        return super().crc64nvme


def checksums_of(path: str | Path) -> Checksums:
    sums = Checksums()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            sums.update(block)
    return sums


def mismatch(label: str, expected_sha256: str | None, expected_crc: str | None, actual: Checksums) -> str | None:
    """A message naming the file when its content no longer matches the recorded checksums, else None."""
    wrong = []
    if expected_sha256 and actual.sha256 != expected_sha256:
        wrong.append(f"sha256 {expected_sha256[:12]}… (now {actual.sha256[:12]}…)")
    if expected_crc and actual.crc64nvme is not None and actual.crc64nvme != expected_crc:
        wrong.append(f"CRC64NVME {expected_crc} (now {actual.crc64nvme})")
    if not wrong:
        return None
    return f"{label} no longer matches its recorded {' and '.join(wrong)}; it changed in storage since upload"


def output_manifest(workdir: Path, skip: tuple[str, ...] = ("inputs", "tmp", "caesar_job.json")) -> list[dict[str, Any]]:
    """size, sha256 and CRC64NVME of every regular file a job left in its directory (inputs excluded)."""
    files = []
    for path in sorted(p for p in workdir.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(workdir)
        if rel.parts[0] in skip:
            continue
        files.append({"path": rel.as_posix(), **checksums_of(path).as_dict()})
    return files


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


def describe_error(exc: BaseException) -> str:
    """S3's error code and message, or the transport error's text."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("Error"):
        err = response["Error"]
        return f"S3 {err.get('Code', '?')}: {err.get('Message') or exc}"
    return f"{exc.__class__.__name__}: {exc}"


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
            if "NoSuchKey" in describe_error(exc) or "404" in describe_error(exc):
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
    except Exception:
        return b""
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

    def __init__(self, store: S3Store, owner: str, fmt: str, limit: int | None = None) -> None:
        self.store = store
        self.uuid = uuidlib.uuid4().hex
        self.url = store.url_for(owner, self.uuid, fmt)
        self.bucket, self.key = split_url(self.url)
        self.limit = limit
        self._sums = BackgroundChecksums()
        self._size = 0
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self.error: Exception | None = None
        self.done = False

    @property
    def size(self) -> int:
        return self._size

    def write(self, data) -> int:
        n = len(data)
        self._size += n
        if self.error is not None or (self.limit is not None and self._size > self.limit):
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
            if "EntityTooLarge" in problem or "QuotaExceeded" in problem:
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

