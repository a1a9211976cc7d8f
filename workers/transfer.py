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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from caesar_rest import egress
from caesar_rest.egress import redact
from caesar_rest.tes_access import READ, WRITE, Refused, allowed_file_path, file_url_path
from caesar_rest.tes_task import DIRECTORY

from .transfer_base import CHUNK, TransferError, TransferStopped, join_url, safe_rel, scheme_of, walk_files
from .transfer_s3 import S3Transfers

__all__ = ["TransferError", "TransferStopped", "Transfers", "redact"]


class Transfers(S3Transfers):
    """Moves data for one task; should_stop() is checked between chunks so a cancel interrupts a transfer."""

    def __init__(self, settings: Mapping[str, Any], owner: str,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        cap = settings.get("TES_MAX_INPUT_BYTES")
        super().__init__(should_stop, int(cap) if cap else None)
        self.settings = settings
        self.owner = owner
        self.timeout = float(settings.get("TES_TRANSFER_TIMEOUT") or 60)
        self.rules = egress.Rules.from_settings(settings)
        self._s3: dict[tuple[Any, ...], Any] = {}

    # ---- public ---------------------------------------------------------------------------------------------
    def download(self, url: str, dest: Path, kind: str) -> int:
        """Fetch url to dest (a file, or a directory for DIRECTORY); returns the bytes written."""
        scheme = scheme_of(url)
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
        scheme = scheme_of(url)
        src = Path(src)
        if kind == DIRECTORY:
            if not src.is_dir():
                raise TransferError(url, f"the output directory {src.name!r} does not exist")
            items = [(p, rel, join_url(url, rel)) for p, rel in walk_files(src)]
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
            for _path, rel in walk_files(src):
                total += self._file_in(join_url(str(src), rel), dest / rel, "FILE")
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
        except (Urllib3Timeout, TimeoutError) as exc:
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
            child = safe_rel(url, f"{rel}/{name}" if rel else name)
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
