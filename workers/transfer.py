"""TES inputs in, outputs out: file:// (inside the owner's TES_FILE_ROOTS), http(s)://, ftp:// and s3:// URLs, files
and directories, each reached only as caesar_rest.tes_access allows its owner (S3 with the owner's or an open
bucket's keys, never the service's) and, over the network, through caesar_rest.egress (every connection and
redirect checked). Every transfer is checked (byte counts, or the object's size on the far side) and every input
capped (TES_MAX_INPUT_BYTES): a transfer that did not happen completely raises TransferError naming the URL and
the reason, never a silent success."""
from __future__ import annotations

import ftplib
import os
import posixpath
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from caesar_rest import egress
from caesar_rest.egress import redact
from caesar_rest.tes_access import READ, WRITE, Refused, S3Access, allowed_file_path, file_url_path, s3_access
from caesar_rest.tes_task import DIRECTORY

CHUNK = 1024 * 1024


class TransferError(Exception):
    """A transfer failed; str() names the URL and why."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{redact(url)}: {reason}")
        self.url = url
        self.reason = reason


class TransferStopped(TransferError):
    """The task was canceled (or ran out of time) while data was moving."""


__all__ = ["TransferError", "TransferStopped", "Transfers", "redact"]


def _scheme(url: str) -> str:
    return "file" if url.startswith("/") else urlsplit(url).scheme.lower()


def _safe_rel(url: str, rel: str) -> str:
    """A relative path from a remote listing, refused when it would leave the destination."""
    clean = posixpath.normpath(rel.lstrip("/"))
    if clean in ("", ".") or clean.startswith("..") or "\x00" in clean:
        raise TransferError(url, f"refusing the entry {rel!r}: it leaves the directory")
    return clean


def _join_url(url: str, rel: str) -> str:
    from urllib.parse import quote

    if _scheme(url) == "file" and url.startswith("/"):
        return url.rstrip("/") + "/" + rel
    return url.rstrip("/") + "/" + quote(rel)


def _walk_files(root: Path) -> Iterator[tuple[Path, str]]:
    """Regular files under root with their relative paths; symbolic links are not followed."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            yield path, path.relative_to(root).as_posix()


class Transfers:
    """Moves data for one task; should_stop() is checked between chunks so a cancel interrupts a transfer."""

    def __init__(self, settings: Mapping[str, Any], owner: str,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.settings = settings
        self.owner = owner
        self.should_stop = should_stop
        self.timeout = float(settings.get("TES_TRANSFER_TIMEOUT") or 60)
        self.rules = egress.Rules.from_settings(settings)
        cap = settings.get("TES_MAX_INPUT_BYTES")
        self.max_input = int(cap) if cap else None
        self._left: int | None = None            # bytes the input being fetched may still bring
        self._s3: dict[tuple[Any, ...], Any] = {}

    # ---- public ---------------------------------------------------------------------------------------------
    def download(self, url: str, dest: Path, kind: str) -> int:
        """Fetch url to dest (a file, or a directory for DIRECTORY); returns the bytes written."""
        scheme = _scheme(url)
        dest = Path(dest)
        self._left = self.max_input
        try:
            if scheme == "file":
                return self._file_in(url, dest, kind)
            if scheme in ("http", "https"):
                if kind == DIRECTORY:
                    raise TransferError(url, "an http(s) URL names one file; DIRECTORY inputs need file://, ftp:// or s3://")
                return self._http_in(url, dest)
            if scheme == "ftp":
                return self._ftp_in(url, dest, kind)
            if scheme == "s3":
                return self._s3_in(url, dest, kind)
        except TransferError:
            raise
        except (Refused, egress.EgressRefused, egress.RedirectRefused) as exc:
            raise TransferError(url, str(exc)) from exc
        except Exception as exc:          # whatever a client library raises, the task learns the URL and why
            raise TransferError(url, f"{exc.__class__.__name__}: {exc}") from exc
        raise TransferError(url, f"{scheme}:// is not a supported input scheme")

    def upload(self, src: Path, url: str, kind: str) -> list[tuple[str, str, int]]:
        """Send src (a file, or a directory's files) to url; returns (url, path relative to src, size) per file."""
        scheme = _scheme(url)
        src = Path(src)
        if kind == DIRECTORY:
            if not src.is_dir():
                raise TransferError(url, f"the output directory {src.name!r} does not exist")
            items = [(p, rel, _join_url(url, rel)) for p, rel in _walk_files(src)]
        else:
            if src.is_symlink() or not src.is_file():
                raise TransferError(url, "the output file does not exist (or is not a regular file)")
            items = [(src, "", url)]
        done = []
        for path, rel, target in items:
            self._check_stop(target)
            try:
                if scheme == "file":
                    size = self._file_out(path, target)
                elif scheme == "ftp":
                    size = self._ftp_out(path, target)
                elif scheme == "s3":
                    size = self._s3_out(path, target)
                else:
                    raise TransferError(url, f"{scheme}:// is not a supported output scheme")
            except TransferError:
                raise
            except (Refused, egress.EgressRefused) as exc:
                raise TransferError(target, str(exc)) from exc
            except Exception as exc:
                raise TransferError(target, f"{exc.__class__.__name__}: {exc}") from exc
            done.append((target, rel, size))
        return done

    # ---- helpers --------------------------------------------------------------------------------------------
    def _check_stop(self, url: str) -> None:
        if self.should_stop():
            raise TransferStopped(url, "stopped: the task was canceled or ran out of time")

    def _count(self, url: str, size: int | None) -> None:
        """Charge size bytes (or a size announced ahead) to the input being fetched; over its cap, stop."""
        if self._left is None or size is None:
            return
        if size > self._left:
            raise TransferError(url, f"the input is larger than TES_MAX_INPUT_BYTES ({self.max_input} bytes)")

    def _copy(self, url: str, chunks: Iterable[bytes], dest: Path) -> int:
        dest.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with open(dest, "wb") as out:
            for chunk in chunks:
                self._check_stop(url)
                self._take(url, len(chunk))
                out.write(chunk)
                written += len(chunk)
        return written

    def _take(self, url: str, size: int) -> None:
        if self._left is not None:
            self._count(url, size)
            self._left -= size

    @staticmethod
    def _chunks(fh: BinaryIO) -> Iterator[bytes]:
        read = getattr(fh, "read1", fh.read)      # what has arrived: a trickling server cannot delay a cancel
        while True:
            chunk = read(CHUNK)
            if not chunk:
                return
            yield chunk

    def _expect(self, url: str, got: int, expected: int | None) -> int:
        if expected is not None and got != expected:
            raise TransferError(url, f"incomplete transfer: {got} of {expected} bytes")
        return got

    # ---- file:// ----------------------------------------------------------------------------------------------
    def _local(self, url: str, access: str) -> Path:
        path = file_url_path(url)
        if not path or not path.startswith("/"):
            raise TransferError(url, "not a local absolute path")
        return Path(allowed_file_path(self.settings, self.owner, path, access))

    def _file_in(self, url: str, dest: Path, kind: str) -> int:
        src = self._local(url, READ)
        if kind == DIRECTORY:
            if not src.is_dir():
                raise TransferError(url, "no such directory")
            dest.mkdir(parents=True, exist_ok=True)
            total = 0
            for path, rel in _walk_files(src):
                total += self._file_in(_join_url(str(src), rel), dest / rel, "FILE")
            return total
        if not src.is_file():
            raise TransferError(url, "no such file")
        expected = src.stat().st_size
        self._count(url, expected)
        with open(src, "rb") as fh:
            return self._expect(url, self._copy(url, self._chunks(fh), dest), expected)

    def _file_out(self, path: Path, url: str) -> int:
        target = self._local(url, WRITE)
        if target.is_dir():
            raise TransferError(url, "a directory is in the way of the output file")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        size = path.stat().st_size
        with open(path, "rb") as fh:
            written = self._copy(url, self._chunks(fh), partial)
        self._expect(url, written, size)
        os.replace(partial, target)
        return self._expect(url, target.stat().st_size, size)

    # ---- http(s):// -------------------------------------------------------------------------------------------
    def _http_in(self, url: str, dest: Path) -> int:
        from urllib3.exceptions import HTTPError, NewConnectionError, TimeoutError as Urllib3Timeout

        response = None
        try:
            final, response = egress.http_request(self.rules, "GET", url, self.timeout,
                                                  headers={"User-Agent": "caesar-rest-tes/1.1"})
            if response.status >= 400:
                raise TransferError(url, f"HTTP {response.status} {response.reason or ''}".rstrip()
                                    + (f" (redirected to {redact(final)})" if final != url else ""))
            length = response.headers.get("Content-Length")
            encoded = response.headers.get("Content-Encoding") not in (None, "identity")
            expected = int(length) if length and length.isdigit() and not encoded else None
            self._count(url, expected)
            return self._expect(url, self._copy(url, self._chunks(response), dest), expected)
        except egress.EgressRefused as exc:
            raise TransferError(url, f"refused by the egress rules: {exc}") from exc
        except egress.RedirectRefused as exc:
            raise TransferError(url, str(exc)) from exc
        except NewConnectionError as exc:         # a subclass of urllib3's TimeoutError, but not a time-out
            raise TransferError(url, f"cannot connect: {exc}") from exc
        except (Urllib3Timeout, socket.timeout, TimeoutError) as exc:
            raise TransferError(url, f"no answer in {self.timeout:g} s") from exc
        except HTTPError as exc:
            raise TransferError(url, f"cannot fetch: {exc}") from exc
        finally:
            if response is not None:
                response.close()

    # ---- ftp:// ---------------------------------------------------------------------------------------------------
    @contextmanager
    def _ftp(self, url: str) -> Iterator[tuple[ftplib.FTP, str]]:
        parts = urlsplit(url)
        ftp = egress.FTP(self.rules, timeout=self.timeout)
        try:
            ftp.connect(parts.hostname or "", parts.port or 21)
            ftp.login(unquote(parts.username or "anonymous"), unquote(parts.password or "anonymous@"))
            ftp.voidcmd("TYPE I")
            yield ftp, unquote(parts.path) or "/"
        except egress.EgressRefused as exc:
            raise TransferError(url, f"refused by the egress rules: {exc}") from exc
        except ftplib.all_errors as exc:
            raise TransferError(url, f"FTP: {str(exc).strip() or exc.__class__.__name__}") from exc
        finally:
            try:
                ftp.quit()
            except Exception:                 # the session is over either way
                ftp.close()

    def _ftp_in(self, url: str, dest: Path, kind: str) -> int:
        with self._ftp(url) as (ftp, path):
            if kind == DIRECTORY:
                dest.mkdir(parents=True, exist_ok=True)
                return sum(self._ftp_get(ftp, url, f"{path.rstrip('/')}/{rel}", dest / rel)
                           for rel in self._ftp_list(ftp, url, path.rstrip("/"), ""))
            return self._ftp_get(ftp, url, path, dest)

    def _ftp_get(self, ftp: ftplib.FTP, url: str, path: str, dest: Path) -> int:
        try:
            ftp.voidcmd("TYPE I")              # a listing switched to ASCII, where SIZE is refused
            expected: int | None = ftp.size(path)
        except ftplib.error_perm as exc:
            raise TransferError(url, f"FTP: {str(exc).strip()}") from exc
        self._count(url, expected)
        dest.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with open(dest, "wb") as out:
            def sink(chunk: bytes) -> None:
                nonlocal written
                self._check_stop(url)
                self._take(url, len(chunk))
                out.write(chunk)
                written += len(chunk)
            ftp.retrbinary(f"RETR {path}", sink, blocksize=CHUNK)
        return self._expect(url, written, expected)

    def _ftp_list(self, ftp: ftplib.FTP, url: str, base: str, rel: str) -> list[str]:
        here = f"{base}/{rel}" if rel else base
        try:
            entries = list(ftp.mlsd(here or "/", facts=["type"]))
        except ftplib.error_perm as exc:
            raise TransferError(url, f"FTP: cannot list {here!r}: {str(exc).strip()}") from exc
        files = []
        for name, facts in sorted(entries):
            if name in (".", ".."):
                continue
            child = _safe_rel(url, f"{rel}/{name}" if rel else name)
            if facts.get("type") == "dir":
                files += self._ftp_list(ftp, url, base, child)
            elif facts.get("type") == "file":
                files.append(child)
        return files

    def _ftp_out(self, path: Path, url: str) -> int:
        size = path.stat().st_size
        with self._ftp(url) as (ftp, target):
            parent = posixpath.dirname(target)
            built = ""
            for part in [p for p in parent.split("/") if p]:
                built += "/" + part
                try:
                    ftp.mkd(built)
                except ftplib.error_perm:
                    pass                      # exists already (or not ours to make: STOR will say)
            with open(path, "rb") as fh:
                def check(_block: bytes) -> None:
                    self._check_stop(url)
                ftp.storbinary(f"STOR {target}", fh, blocksize=CHUNK, callback=check)
            return self._expect(url, ftp.size(target) or 0, size)

    # ---- s3:// ----------------------------------------------------------------------------------------------------
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
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise TransferError(url, f"S3 {err.get('Code', '?')}: {err.get('Message') or exc}") from exc
        except Boto3Error as exc:          # upload_file wraps the ClientError that says why
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ClientError):
                err = cause.response.get("Error", {})
                raise TransferError(url, f"S3 {err.get('Code', '?')}: {err.get('Message') or cause}") from exc
            raise TransferError(url, f"S3: {exc}") from exc
        except BotoCoreError as exc:
            raise TransferError(url, f"S3: {exc}") from exc

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
                    rel = _safe_rel(url, obj["Key"][len(prefix):])
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
