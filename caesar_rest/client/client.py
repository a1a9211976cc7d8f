"""`Client`: every caesar-rest v1.0 endpoint as a typed, synchronous method on httpx."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import httpx

from .. import API_PREFIX, __version__
from .errors import TransportError, api_error
from .models import (
    TERMINAL_STATES,
    AppDescription,
    AppSummary,
    FileRecord,
    JobLogs,
    JobPage,
    JobStatus,
    JobSummary,
)
from .transfer import (
    TUS,
    TUS_CHUNK,
    TUS_PATH,
    MultipartUpload,
    Progress,
    ResumeBook,
    chunk_body,
    filename_of,
    resumable_endpoint,
    save_stream,
    sha1_checksum,
    tus_metadata,
)


def api_base(url: str) -> str:
    """The API root of a service URL: 'http://host:8080' and 'http://host:8080/caesar/api/v1.0' give the same."""
    url = url.rstrip("/")
    return url if url.endswith(API_PREFIX) else url + API_PREFIX


class Client:
    """A caesar-rest service. `url` is the service (or its API root); `token` sends 'Authorization: Bearer',
    `basic` = (user, password) HTTP Basic. Errors: `APIError` subclasses carrying the service's JSON error,
    `TransportError` when it cannot be reached. Use as a context manager, or call close()."""

    def __init__(self, url: str, token: str | None = None, basic: tuple[str, str] | None = None,
                 timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.api = api_base(url)
        headers = {"User-Agent": f"caesar-client/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        auth = httpx.BasicAuth(*basic) if basic else None
        self.http = httpx.Client(headers=headers, auth=auth, timeout=httpx.Timeout(timeout, connect=10.0),
                                 transport=transport, follow_redirects=True)
        self._tus: str | None = None        # the tus endpoint once asked ("" for none)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the plumbing --------------------------------------------------------------------------------------------
    def _send(self, method: str, path: str, stream: bool = False, **kwargs: Any) -> httpx.Response:
        """One request; an error answer raises its APIError (its JSON error body read), transport failures
        TransportError. A streamed answer is returned open: the caller closes it."""
        try:
            request = self.http.build_request(method, self.api + path, **kwargs)
            response = self.http.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            raise TransportError(f"{self.url} did not answer in time ({exc.__class__.__name__})") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                response.read()
                body = response.json()
            except (ValueError, httpx.HTTPError):
                body = None
            finally:
                response.close()
            raise api_error(response.status_code, body, response.text if body is None else "",
                            response.headers.get("www-authenticate"))
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise TransportError(f"{method} {path}: the answer is not JSON ({response.status_code})") from exc

    # ---- files ---------------------------------------------------------------------------------------------------
    def upload(self, path: str | Path, tag: str | None = None, progress: Progress | None = None,
               resumable: bool | None = None, chunk_size: int = TUS_CHUNK,
               resume_book: ResumeBook | None = None) -> FileRecord:
        """Upload a file, streamed from disk (never read whole into memory). resumable None (the default): in
        chunks over tus when the service offers it, a run that broke off resuming where it stopped (the upload's
        URL is kept in resume_book, the config directory's uploads.json by default); else POST /upload in one
        request. True insists on tus, False takes one request."""
        path = Path(path)
        if resumable is not False and self.resumable_uploads() is not None:
            return self._tus_upload(path, tag, progress, chunk_size, resume_book or ResumeBook())
        if resumable:
            raise TransportError(f"{self.url} offers no resumable uploads")
        return self._post_upload(path, tag, progress)

    def _post_upload(self, path: Path, tag: str | None, progress: Progress | None) -> FileRecord:
        body = MultipartUpload(Path(path), tag, progress)
        headers = {"Content-Type": body.content_type, "Content-Length": str(body.length)}
        # No read timeout while the body goes out: the server answers once it has the whole file.
        timeout = httpx.Timeout(None, connect=10.0)
        return cast(FileRecord, self._json("POST", "/upload", content=iter(body), headers=headers, timeout=timeout))

    def resumable_uploads(self) -> str | None:
        """The service's resumable-upload (tus) endpoint, or None when it offers none (transfer.py)."""
        if self._tus is None:
            self._tus = resumable_endpoint(self.http, self.api) or ""
        return self._tus or None

    def _tus_upload(self, path: Path, tag: str | None, progress: Progress | None, chunk_size: int,
                    book: ResumeBook) -> FileRecord:
        size = path.stat().st_size
        key = book.key(self.api, path)
        url = book.get(key)
        offset = 0
        if url is not None:
            found = self._tus_offset(url, size)
            if found is None:               # gone (expired, deleted) or not this file's: a new upload
                book.forget(key)
                url = None
            else:
                offset = found
        if url is None:
            created = self._send("POST", TUS_PATH, headers={**TUS, "Upload-Length": str(size),
                                                             "Upload-Metadata": tus_metadata(path.name, tag)})
            url = str(httpx.URL(self.api + "/").join(created.headers["location"]))
            book.put(key, url)
        if progress:
            progress(offset, size)
        cuts = 0
        with open(path, "rb") as fh:
            while offset < size:
                fh.seek(offset)
                data = fh.read(min(chunk_size, size - offset))
                headers = {**TUS, "Upload-Offset": str(offset), "Content-Length": str(len(data)),
                           "Content-Type": "application/offset+octet-stream", "Upload-Checksum": sha1_checksum(data)}
                try:
                    answer = self.http.patch(url, content=chunk_body(data, offset, size, progress), headers=headers,
                                             timeout=httpx.Timeout(None, connect=10.0))
                except httpx.HTTPError as exc:
                    cuts += 1
                    found = self._tus_offset(url, size, quiet=True)
                    if cuts > 3 or found is None:
                        raise TransportError(f"the upload of {path.name} broke off at {offset} of {size} bytes "
                                             f"({exc}); run it again to resume") from exc
                    offset = found
                    time.sleep(min(2.0 ** cuts, 10.0))
                    continue
                if answer.status_code in (409, 460):      # another writer moved it, or the chunk came damaged
                    found = self._tus_offset(url, size)
                    if found is None or (answer.status_code == 460 and cuts >= 3):
                        raise api_error(answer.status_code, _json_or_none(answer), answer.text)
                    cuts += answer.status_code == 460
                    offset = found
                    continue
                if answer.status_code >= 400:
                    raise api_error(answer.status_code, _json_or_none(answer), answer.text)
                offset = int(answer.headers["upload-offset"])
        view = self._json("GET", url[len(self.api):])
        book.forget(key)
        if not view.get("file"):
            raise TransportError(f"the upload of {path.name} is whole but the service made no file of it")
        return cast(FileRecord, view["file"])

    def _tus_offset(self, url: str, size: int, quiet: bool = False) -> int | None:
        """Where the upload stands (HEAD), or None when it is gone or not of this size."""
        try:
            head = self.http.head(url, headers=TUS)
        except httpx.HTTPError:
            if quiet:
                return None
            raise
        if head.status_code != 200 or head.headers.get("upload-length") != str(size):
            return None
        return int(head.headers["upload-offset"])

    def files(self, tag: str | None = None) -> list[FileRecord]:
        """GET /fileids: your files, oldest first."""
        return cast(list[FileRecord], self._json("GET", "/fileids", params={"tag": tag} if tag is not None else {}))

    def download(self, file_uuid: str, dest: str | Path | None = None, progress: Progress | None = None) -> Path:
        """GET /download-id/<uuid> into dest (a file, or a directory to put it in under its original name; the
        current directory by default). Returns the path written."""
        return self._save(f"/download-id/{file_uuid}", dest, progress)

    def delete_file(self, file_uuid: str) -> dict[str, Any]:
        """DELETE /delete/<uuid> (409 while a queued or running job uses it)."""
        return cast(dict[str, Any], self._json("DELETE", f"/delete/{file_uuid}"))

    def _save(self, path: str, dest: str | Path | None, progress: Progress | None) -> Path:
        response = self._send("GET", path, stream=True, timeout=httpx.Timeout(300.0, connect=10.0))
        try:
            target = Path(dest) if dest is not None else Path.cwd()
            if target.is_dir():
                target = target / (filename_of(response) or path.rstrip("/").rsplit("/", 1)[-1])
            try:
                save_stream(response, target, progress)
            except httpx.HTTPError as exc:
                raise TransportError(f"the download from {self.url} broke off: {exc}") from exc
            return target
        finally:
            response.close()

    # ---- apps ----------------------------------------------------------------------------------------------------
    def apps(self) -> list[AppSummary]:
        """GET /apps."""
        return cast(list[AppSummary], self._json("GET", "/apps")["apps"])

    def describe(self, app: str) -> AppDescription:
        """GET /app/<name>/describe: the app and its options (type, default, range, help, category)."""
        return cast(AppDescription, self._json("GET", f"/app/{app}/describe"))

    # ---- jobs ----------------------------------------------------------------------------------------------------
    def submit(self, app: str, job_inputs: Mapping[str, Any] | None = None, *, tag: str | None = None,
               backend: str | None = None, data_inputs: str | list[str] | None = None,
               backend_options: Mapping[str, Any] | None = None, notify: Any = None) -> JobSummary:
        """POST /job: the accepted job, state PENDING. File options take a file's uuid (or its server path)."""
        body: dict[str, Any] = {"app": app, "job_inputs": dict(job_inputs or {})}
        for key, value in (("tag", tag), ("backend", backend), ("data_inputs", data_inputs),
                           ("backend_options", dict(backend_options) if backend_options else None),
                           ("notify", notify)):
            if value is not None:
                body[key] = value
        return cast(JobSummary, self._json("POST", "/job", json=body))

    def jobs(self, *, state: str | list[str] | None = None, app: str | None = None, tag: str | None = None,
             backend: str | None = None, per_page: int | None = None, page_token: str | None = None) -> JobPage:
        """GET /jobs: one page, newest first; pass its next_page_token back as page_token for the next one."""
        params: dict[str, Any] = {"app": app, "tag": tag, "backend": backend, "per_page": per_page,
                                  "page_token": page_token,
                                  "state": ",".join(state) if isinstance(state, list) else state}
        return cast(JobPage, self._json("GET", "/jobs", params={k: v for k, v in params.items() if v is not None}))

    def iter_jobs(self, limit: int | None = None, per_page: int = 100, **filters: Any) -> Iterator[JobSummary]:
        """Every job matching the filters, newest first, page after page by keyset token (at most limit)."""
        token: str | None = None
        given = 0
        while True:
            size = per_page if limit is None else max(1, min(per_page, limit - given))
            page = self.jobs(per_page=size, page_token=token, **filters)
            for job in page.get("jobs", []):
                if limit is not None and given >= limit:
                    return
                given += 1
                yield job
            token = page.get("next_page_token")
            if not token or (limit is not None and given >= limit):
                return

    def job(self, job_id: str) -> JobSummary:
        """GET /job/<id>."""
        return cast(JobSummary, self._json("GET", f"/job/{job_id}"))

    def status(self, job_id: str) -> JobStatus:
        """GET /job/<id>/status."""
        return cast(JobStatus, self._json("GET", f"/job/{job_id}/status"))

    def logs(self, job_id: str, tail: int | None = None) -> JobLogs:
        """GET /job/<id>/logs: stdout and stderr (the last `tail` lines)."""
        params = {"tail": tail} if tail is not None else {}
        return cast(JobLogs, self._json("GET", f"/job/{job_id}/logs", params=params))

    def metadata(self, job_id: str) -> dict[str, Any]:
        """GET /job/<id>/metadata: provenance (app and version, options, argv, backend, timings, states)."""
        return cast(dict[str, Any], self._json("GET", f"/job/{job_id}/metadata"))

    def cancel(self, job_id: str) -> JobStatus:
        """POST /job/<id>/cancel (409 once the job has finished)."""
        return cast(JobStatus, self._json("POST", f"/job/{job_id}/cancel"))

    def notifications(self, job_id: str) -> dict[str, Any]:
        """GET /job/<id>/notifications: the job's notification targets, each delivery and its attempts."""
        return cast(dict[str, Any], self._json("GET", f"/job/{job_id}/notifications"))

    def output(self, job_id: str, dest: str | Path | None = None, progress: Progress | None = None) -> Path:
        """GET /job/<id>/output: the job directory's tar.gz into dest (a file or a directory; 409 until it ends)."""
        return self._save(f"/job/{job_id}/output", dest, progress)

    def wait(self, job_id: str, timeout: float | None = None, interval: float = 0.5,
             on_status: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Poll the job's status until it ends (on_status sees each one); TimeoutError after timeout seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if on_status:
                on_status(status)
            if status.get("state") in TERMINAL_STATES:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {status.get('state')} after {timeout} s")
            time.sleep(interval)

    # ---- the rest --------------------------------------------------------------------------------------------------
    def accounting(self) -> dict[str, Any]:
        """GET /accounting: bytes stored, files, jobs by state and job-seconds used (an admin sees every user)."""
        return cast(dict[str, Any], self._json("GET", "/accounting"))

    def appstats(self) -> dict[str, Any]:
        """GET /appstats: jobs by state, job-seconds and users per app (an admin sees every user's)."""
        return cast(dict[str, Any], self._json("GET", "/appstats"))

    def health(self) -> dict[str, Any]:
        """GET /health (outside the API prefix): the service's parts and their latencies."""
        try:
            response = self.http.get(self.api[: -len(API_PREFIX)] + "/health")
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach {self.url}: {exc}") from exc
        return cast(dict[str, Any], response.json())


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
