"""TES inputs in, outputs out: file:// (inside TES_FILE_ROOTS), http(s)://, ftp:// and s3:// URLs, files and
directories. Every transfer is checked (byte counts, or the object's size on the far side): a transfer that
did not happen completely raises TransferError naming the URL and the reason, never a silent success."""
from __future__ import annotations

import ftplib
import os
import posixpath
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from caesar_rest.tes_task import DIRECTORY, allowed_file_path, file_url_path

CHUNK = 1024 * 1024


class TransferError(Exception):
    """A transfer failed; str() names the URL and why."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{redact(url)}: {reason}")
        self.url = url
        self.reason = reason


class TransferStopped(TransferError):
    """The task was canceled (or ran out of time) while data was moving."""


def redact(url: str) -> str:
    """The URL without a password (ftp://user:secret@host)."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc).geturl()
    return url


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

    def __init__(self, settings: Mapping[str, Any], should_stop: Callable[[], bool] = lambda: False) -> None:
        self.settings = settings
        self.should_stop = should_stop
        self.timeout = float(settings.get("TES_TRANSFER_TIMEOUT") or 60)
        self._s3: Any = None

    # ---- public ---------------------------------------------------------------------------------------------
    def download(self, url: str, dest: Path, kind: str) -> int:
        """Fetch url to dest (a file, or a directory for DIRECTORY); returns the bytes written."""
        scheme = _scheme(url)
        dest = Path(dest)
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
            except Exception as exc:
                raise TransferError(target, f"{exc.__class__.__name__}: {exc}") from exc
            done.append((target, rel, size))
        return done

    # ---- helpers --------------------------------------------------------------------------------------------
    def _check_stop(self, url: str) -> None:
        if self.should_stop():
            raise TransferStopped(url, "stopped: the task was canceled or ran out of time")

    def _copy(self, url: str, chunks: Iterable[bytes], dest: Path) -> int:
        dest.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with open(dest, "wb") as out:
            for chunk in chunks:
                self._check_stop(url)
                out.write(chunk)
                written += len(chunk)
        return written

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
    def _local(self, url: str) -> Path:
        path = file_url_path(url)
        real = allowed_file_path(self.settings, path) if path and path.startswith("/") else None
        if real is None:
            raise TransferError(url, "outside the directories TES tasks may use (TES_FILE_ROOTS)")
        return Path(real)

    def _file_in(self, url: str, dest: Path, kind: str) -> int:
        src = self._local(url)
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
        with open(src, "rb") as fh:
            return self._expect(url, self._copy(url, self._chunks(fh), dest), expected)

    def _file_out(self, path: Path, url: str) -> int:
        target = self._local(url)
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
        request = urllib.request.Request(url, headers={"User-Agent": "caesar-rest-tes/1.1"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                length = response.headers.get("Content-Length")
                encoded = response.headers.get("Content-Encoding") not in (None, "identity")
                expected = int(length) if length and length.isdigit() and not encoded else None
                return self._expect(url, self._copy(url, self._chunks(response), dest), expected)
        except urllib.error.HTTPError as exc:
            raise TransferError(url, f"HTTP {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            raise TransferError(url, f"cannot connect: {exc.reason}") from exc
        except (socket.timeout, TimeoutError) as exc:
            raise TransferError(url, f"no answer in {self.timeout:g} s") from exc

    # ---- ftp:// ---------------------------------------------------------------------------------------------------
    @contextmanager
    def _ftp(self, url: str) -> Iterator[tuple[ftplib.FTP, str]]:
        parts = urlsplit(url)
        ftp = ftplib.FTP(timeout=self.timeout)
        try:
            ftp.connect(parts.hostname or "", parts.port or 21)
            ftp.login(unquote(parts.username or "anonymous"), unquote(parts.password or "anonymous@"))
            ftp.voidcmd("TYPE I")
            yield ftp, unquote(parts.path) or "/"
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
        dest.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with open(dest, "wb") as out:
            def sink(chunk: bytes) -> None:
                nonlocal written
                self._check_stop(url)
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
    def _client(self):
        if self._s3 is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:
                raise TransferError("s3://", "boto3 is not installed: pip install 'caesar-rest[s3]'") from exc
            cfg = self.settings
            # Checksums only where S3 requires them: S3 look-alikes disagree with boto3's default CRCs.
            config = Config(s3={"addressing_style": "path"}, connect_timeout=self.timeout, read_timeout=self.timeout,
                            retries={"max_attempts": 3, "mode": "standard"},
                            request_checksum_calculation="when_required", response_checksum_validation="when_required")
            self._s3 = boto3.client("s3", endpoint_url=cfg.get("S3_ENDPOINT_URL") or None,
                                    aws_access_key_id=cfg.get("S3_ACCESS_KEY_ID") or None,
                                    aws_secret_access_key=cfg.get("S3_SECRET_ACCESS_KEY") or None,
                                    region_name=cfg.get("S3_REGION") or None, config=config)
        return self._s3

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

    @staticmethod
    def _bucket_key(url: str) -> tuple[str, str]:
        parts = urlsplit(url)
        return parts.netloc, unquote(parts.path.lstrip("/"))

    def _s3_in(self, url: str, dest: Path, kind: str) -> int:
        bucket, key = self._bucket_key(url)
        client = self._client()
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
            written = self._copy(url, iter(lambda: body.read(CHUNK), b""), dest)
        finally:
            body.close()
        return self._expect(url, written, answer.get("ContentLength"))

    def _s3_out(self, path: Path, url: str) -> int:
        bucket, key = self._bucket_key(url)
        size = path.stat().st_size
        client = self._client()
        with self._s3_errors(url):
            client.upload_file(str(path), bucket, key, Callback=lambda _n: self._check_stop(url))
            return self._expect(url, int(client.head_object(Bucket=bucket, Key=key)["ContentLength"]), size)

