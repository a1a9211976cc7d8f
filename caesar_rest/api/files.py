"""Data files: upload (streamed to disk), list, download, delete."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import jsonify, request, send_file
from flask_smorest import Blueprint
from sqlalchemy import func, select, update

from .. import multipart, resumable, s3store, storage
from ..auth import current_owner, owner_filter, user_setting
from ..errors import (
    BadRequest,
    CaesarError,
    Conflict,
    InsufficientStorage,
    LengthRequired,
    NotFound,
    PayloadTooLarge,
    UnsupportedFormat,
)
from ..jobs import file_in_use, get_file
from ..models import File, Upload, utcnow
from ..sinks import WriteSink
from . import docs
from .common import session, settings

blp = Blueprint("files", __name__, description="Upload, list, download and delete data files")

FRAMING_BYTES = 1024 * 1024             # room for what a multipart body holds besides its file
SINKS_KEY = "caesar.upload_sinks"      # the sinks a request opened, discarded at teardown unless registered


def discard_uploads(_exc=None) -> None:
    """Remove any part file a request left behind (errors, aborted requests)."""
    for sink in request.environ.pop(SINKS_KEY, []):
        sink.discard()


class _Discard(WriteSink):
    """Where the bytes of a file part go when the part is refused: counted and dropped, so the body is still
    read to its end and the client gets the error instead of a reset connection."""

    def write(self, data) -> int:
        self.size += len(data)
        return len(data)


@blp.route("/upload", methods=["POST"])
@blp.doc(summary="Upload a file (multipart field 'file', optional 'tag')",
         requestBody={"required": True, "content": {"multipart/form-data": {"schema": {
             "type": "object", "required": ["file"],
             "properties": {"file": {"type": "string", "format": "binary", "minLength": 1},
                            "tag": {"type": "string", "maxLength": 255, "pattern": "^[^\\u0000]*$"}}}}}})
@blp.doc(responses=docs.responses(200, "File", "The stored file's record", (400, 411, 413, 415, 507)))
def upload():
    if request.mimetype != "multipart/form-data":
        raise UnsupportedFormat(f"Upload with Content-Type multipart/form-data (curl -F 'file=@name'), "
                                f"not {request.mimetype or 'no content type'}")
    cfg = settings()
    owner = current_owner()
    name, fmt, sink, form = _receive(cfg, owner)
    tag = form.get("tag")
    if tag is not None and (len(tag) > 255 or "\x00" in tag):
        raise BadRequest("'tag' must be at most 255 characters without NUL", field="tag")
    record = _register(cfg, owner, name, fmt, sink, tag)
    request.environ[SINKS_KEY].remove(sink)
    return jsonify({**record.to_dict(), "status": "File uploaded with success"})


def _receive(cfg, owner: str) -> tuple[str, str, Any, Any]:
    """Read the request body: the one 'file' part into its sink (the data directory or S3), every other file part
    discarded. Returns (file name, format, sink, form); a part refused at its headers (bad name or format, a
    second file) is the error, raised once the body has been read."""
    data_dir = storage.user_dir(cfg["DATA_DIR"], owner)
    limit = int(cfg["MAX_UPLOAD_BYTES"])
    room = _quota_room(cfg, owner)          # None: no quota; else bytes the owner may still store
    sink_limit = limit if room is None else min(limit, room)
    allowed = cfg.get("ALLOWED_FORMATS")
    sinks = request.environ.setdefault(SINKS_KEY, [])       # discarded by the teardown if the request fails
    chosen: list[tuple[str, str, Any]] = []
    refused: list[Exception] = []

    def open_file(field: str, filename: str | None):
        if field != "file":
            return _Discard()
        try:
            if chosen:
                raise BadRequest("Send one file per upload in the field 'file'", field="file")
            name = storage.check_filename(filename)
            fmt = storage.file_format(name)
            if allowed and fmt not in allowed:
                raise UnsupportedFormat(f"Files of format {fmt!r} are not accepted; allowed: {', '.join(allowed)}",
                                        format=fmt)
        except CaesarError as exc:
            refused.append(exc)
            return _Discard()
        # The sink stops storing past sink_limit (the body is still read to its end, and the sink dropped after).
        sink: s3store.S3UploadSink | storage.UploadSink
        if cfg.get("STORAGE") == "s3":
            sink = s3store.S3UploadSink(s3store.store_for(cfg), owner, fmt, sink_limit)
        else:
            sink = storage.UploadSink(data_dir, sink_limit)
        sinks.append(sink)
        chosen.append((name, fmt, sink))
        return sink

    # Refused before a byte of the body is read when its Content-Length already says it cannot fit: a body may
    # hold FRAMING_BYTES besides the file (boundaries, headers, the tag); what is within that is decided as the
    # file streams in (the sink stops storing at sink_limit).
    length = request.content_length
    if length is not None:
        if length > limit + FRAMING_BYTES:
            raise PayloadTooLarge(f"The file is larger than the {limit} bytes this server accepts")
        if room is not None and length > room + FRAMING_BYTES:
            raise _over_quota(cfg, owner, room)
    body = multipart.body_stream(request.environ, lambda: request.stream)
    form = multipart.parse(body, request.content_type or "", open_file)
    if refused:
        raise refused[0]
    if not chosen and not form.fields and "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        # uWSGI's own HTTP socket hands a chunked body over as empty (nginx in front de-chunks it).
        raise LengthRequired("This server got no body from a chunked upload: send it with a Content-Length "
                             "(curl -F does, unless told 'Transfer-Encoding: chunked')")
    if not chosen:
        if form.get("file") is not None:
            raise BadRequest("The multipart field 'file' must be a file part (curl -F 'file=@name')", field="file")
        raise BadRequest("No file in the request: send it in the multipart field 'file' (curl -F 'file=@name')",
                         field="file")
    name, fmt, sink = chosen[0]
    if room is not None and sink.size > room:
        raise _over_quota(cfg, owner, room)
    if sink.size > limit:
        raise PayloadTooLarge(f"The file is larger than the {limit} bytes this server accepts")
    if sink.size == 0 and sink.error is None:
        raise BadRequest(f"The file {name!r} is empty", field="file")
    return name, fmt, sink, form


def _quota(cfg, owner: str) -> int | None:
    quota = user_setting(owner, "max_stored_bytes", cfg.get("MAX_STORED_BYTES_PER_USER"))
    return None if quota is None else int(quota)


def _quota_room(cfg, owner: str) -> int | None:
    """Bytes the owner may still store, before the upload is read (None: no quota). _register checks again under
    the owner's lock, for uploads that ran at the same time."""
    quota = _quota(cfg, owner)
    if quota is None:
        return None
    with session() as s:
        used = stored_bytes(s, owner)
    room = quota - used
    if room <= 0:
        raise _over_quota(cfg, owner, room)
    return room


def stored_bytes(s, owner: str, upload_id: str | None = None) -> int:
    """What counts against the owner's quota: their files, and what their unfinished resumable uploads declared
    (but upload_id's, which is being completed)."""
    files = s.scalar(select(func.coalesce(func.sum(File.size_bytes), 0)).where(File.owner == owner)) or 0
    return int(files) + resumable.reserved_bytes(s, owner, exclude=upload_id)


def _over_quota(cfg, owner: str, room: int) -> InsufficientStorage:
    quota = _quota(cfg, owner) or 0
    used = quota - room
    return InsufficientStorage(f"This upload would exceed your quota of {quota} bytes ({used} used, {max(room, 0)} "
                               "free); delete files first", used_bytes=used, quota_bytes=quota)


def _register(cfg, owner: str, name: str, fmt: str, sink, tag: str | None, upload_id: str | None = None) -> File:
    """Move the received file to its final place and insert its record, within the owner's quota; on any error
    the stored file is removed again (nothing half-registered). upload_id: the resumable upload this file
    completes, marked complete in the same transaction."""
    quota = _quota(cfg, owner)
    if isinstance(sink, s3store.S3UploadSink):
        sink.commit()
        final: str | Path = sink.url
        drop = sink.discard
    else:
        path = storage.user_dir(cfg["DATA_DIR"], owner) / f"{sink.uuid}.{fmt}"
        sink.commit(path)
        final = path
        drop = lambda: path.unlink(missing_ok=True)
    try:
        with session() as s:
            record = File(uuid=sink.uuid, owner=owner, filename_orig=name, format=fmt, path=str(final),
                          size_bytes=sink.size, sha256=sink.sha256, crc64nvme=sink.crc64nvme, tag=tag,
                          created_at=utcnow())
            if quota is not None:
                _lock_quota(s, owner)
            s.add(record)
            if upload_id is not None:
                s.execute(update(Upload).where(Upload.id == upload_id).values(completed_at=utcnow(),
                                                                               offset=sink.size))
            s.flush()
            if quota is not None:
                used = stored_bytes(s, owner, upload_id)
                if used > int(quota):
                    before = used - sink.size
                    raise InsufficientStorage(f"Storing {sink.size} more bytes would exceed your quota of {quota} "
                                              f"bytes ({before} used); delete files first", used_bytes=before,
                                              quota_bytes=int(quota))
    except BaseException:
        drop()
        raise
    return record


def _lock_quota(s, owner: str) -> None:
    """Serialise one owner's uploads from here to commit, so two at once cannot both fit under the quota.
    PostgreSQL: an advisory lock held to the end of the transaction. SQLite: the INSERT that follows takes the
    database's write lock before the sum is read (WAL: a writer reads the newest data), which is enough."""
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy import text

        s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"caesar-quota:{owner}"})


@blp.route("/fileids", methods=["GET"])
@blp.doc(summary="List your uploaded files", parameters=docs.query(("tag", "string", "only files with this tag")),
         responses=docs.responses(200, {"type": "array", "items": {"$ref": docs.S + "File"}}, "Your files"))
def fileids():
    with session() as s:
        query = select(File).order_by(File.created_at)
        owner = owner_filter()
        if owner is not None:
            query = query.where(File.owner == owner)
        if request.args.get("tag") is not None:
            query = query.where(File.tag == request.args["tag"])
        records = s.scalars(query).all()
        return jsonify([r.to_dict() for r in records])


@blp.route("/download/<file_id>", methods=["GET", "POST"], endpoint="download_by_uuid",
           parameters=[docs.FILE_ID])
@blp.route("/download-id/<file_id>", methods=["GET", "POST"], parameters=[docs.FILE_ID])
@blp.doc(summary="Download a file by uuid (/download/<uuid>, the later upstream's name, is the same)",
         parameters=docs.query(("presign", "string", ("with S3 storage: 1 redirects (307) to a presigned URL, "
                                                      "json answers {url, expires_in}"))),
         responses={"200": {"description": "The file, or {url, expires_in} with presign=json", "content": {
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        "application/json": {"schema": {"type": "object", "properties": {
                            "url": {"type": "string"}, "expires_in": {"type": "integer"}}}}}},
                    "307": {"description": "Redirect to a presigned S3 URL (presign=1, S3 storage)"},
                    **docs.errors(400, 404), **docs.ERRORS})
def download(file_id: str):
    with session() as s:
        record = get_file(s, owner_filter(), file_id)
        path, name = record.path, record.filename_orig
    if s3store.is_s3(path):
        return _s3_download(path, name)
    if not os.path.exists(path):
        raise NotFound(f"File with uuid {file_id} is registered but its data is missing on the server")
    if settings().get("ACCEL_REDIRECT"):
        handed_over = _accel_redirect(path, name)
        if handed_over is not None:
            return handed_over
    return send_file(path, mimetype="application/octet-stream", as_attachment=True, download_name=name,
                     conditional=True, max_age=0)


def _s3_download(url: str, name: str):
    """Streamed from S3 through the API, or (?presign=1 / ?presign=json) straight from S3 by a presigned URL."""
    from urllib.parse import quote

    from flask import Response, redirect

    store = s3store.store_for(settings())
    mode = s3store.check_presign_arg(request.args.get("presign"))
    if mode is not None:
        signed = store.presign(url, name)
        if mode == "json":
            return jsonify({"url": signed, "expires_in": store.presign_expiry})
        return redirect(signed, code=307)
    blocks, length = store.open_stream(url)
    response = Response(blocks, mimetype="application/octet-stream", direct_passthrough=True)
    response.headers["Content-Length"] = str(length)
    response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name, safe='')}"
    return response


def _accel_redirect(path: str, name: str):
    """Behind nginx (ACCEL_REDIRECT): the checks above ran here, nginx sends the bytes from its internal
    location aliasing DATA_DIR (sendfile, ranges). None when the file lies outside DATA_DIR."""
    import mimetypes
    import unicodedata
    from urllib.parse import quote

    from flask import Response

    data_dir = os.path.realpath(settings()["DATA_DIR"])
    real = storage.within(Path(data_dir), path)
    if real is None:
        return None
    response = Response(status=200, mimetype=mimetypes.guess_type(name)[0] or "application/octet-stream")
    prefix = settings()["ACCEL_REDIRECT_PREFIX"]
    response.headers["X-Accel-Redirect"] = prefix + quote(real.relative_to(data_dir).as_posix())
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii") or "download"
    names = {"filename": ascii_name}
    if ascii_name != name:
        names["filename*"] = f"UTF-8''{quote(name, safe='')}"
    response.headers.set("Content-Disposition", "attachment", **names)
    return response


@blp.route("/delete/<file_id>", methods=["POST", "DELETE"], parameters=[docs.FILE_ID])
@blp.doc(summary="Delete a file (refused while an active job uses it)",
         responses=docs.responses(200, "Deleted", "The file is gone", (400, 404, 409)))
def delete(file_id: str):
    with session() as s:
        record = get_file(s, owner_filter(), file_id)
        job_id = file_in_use(s, record.uuid)
        if job_id:
            raise Conflict(f"File {file_id} is used by job {job_id}, which has not finished; "
                           "delete it after the job ends or cancel the job", job_id=job_id)
        path = record.path
        s.delete(record)
    if s3store.is_s3(path):
        s3store.store_for(settings()).delete(path)
    else:
        Path(path).unlink(missing_ok=True)
    return jsonify({"uuid": file_id, "status": f"File with uuid {file_id} deleted"})
