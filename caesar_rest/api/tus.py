"""Resumable uploads over tus 1.0 (caesar_rest/resumable.py): POST /uploads creates one, HEAD tells its offset,
PATCH appends a chunk, DELETE ends it; once whole it is a file exactly as POST /upload makes one, of the same uuid.
GET /uploads/<id> (not tus) shows it as JSON, with the file's record once done."""
from __future__ import annotations

import os
import re
import uuid
from typing import Any

from flask import Response, jsonify, request
from flask_smorest import Blueprint

from .. import API_PREFIX, multipart, resumable, s3store, storage
from ..auth import current_owner
from ..checksums import BackgroundChecksums, Checksums
from ..errors import BadRequest, Conflict, InsufficientStorage, NotFound, PreconditionFailed, UnsupportedFormat
from ..models import File, Upload, utcnow
from . import docs, files as files_api
from .common import session, settings

blp = Blueprint("tus", __name__, description="Resumable uploads (the tus 1.0 protocol)")

UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
UPLOAD_ID = docs.path_param("upload_id", UPLOAD_ID_RE.pattern, "the upload's id (and its file's uuid once whole)")
TUS_HEADER = {"name": "Tus-Resumable", "in": "header", "required": True, "description": "the tus version: 1.0.0",
              "schema": {"type": "string", "enum": [resumable.TUS_VERSION]}}
OFFSET_HEADER = {"name": "Upload-Offset", "in": "header", "required": True, "description": "where this chunk goes",
                 "schema": {"type": "integer", "minimum": 0}}


@blp.before_request
def _tus_version() -> None:
    """Every tus request names the protocol's version (OPTIONS, which discovers it, and the JSON view need not)."""
    if request.method in ("OPTIONS", "GET"):
        return
    given = request.headers.get("Tus-Resumable")
    if given is None:       # the protocol says nothing of a request without it: a plain bad request
        raise BadRequest(f"The Tus-Resumable header is required: send 'Tus-Resumable: {resumable.TUS_VERSION}'",
                         field="Tus-Resumable")
    if given != resumable.TUS_VERSION:      # a version this server does not speak: tus's 412, with Tus-Version
        raise PreconditionFailed(f"This server speaks tus {resumable.TUS_VERSION}: send 'Tus-Resumable: "
                                 f"{resumable.TUS_VERSION}', not {given!r}", field="Tus-Resumable")


@blp.after_request
def _tus_headers(response: Response) -> Response:
    response.headers["Tus-Resumable"] = resumable.TUS_VERSION
    if request.method == "OPTIONS" or response.status_code in (400, 412):
        response.headers["Tus-Version"] = resumable.TUS_VERSION
    if response.status_code == 204:
        response.headers.pop("Content-Type", None)      # no body, no type
    if request.method == "OPTIONS":
        response.headers["Tus-Extension"] = ",".join(resumable.EXTENSIONS)
        response.headers["Tus-Max-Size"] = str(int(settings()["MAX_UPLOAD_BYTES"]))
        response.headers["Tus-Checksum-Algorithm"] = ",".join(resumable.CHECKSUMS)
    return response


def _location(upload_id: str) -> str:
    return f"{API_PREFIX}/uploads/{upload_id}"


def _state_headers(upload: Upload, response: Response) -> Response:
    response.headers["Upload-Offset"] = str(upload.offset)
    response.headers["Upload-Length"] = str(upload.length)
    response.headers["Upload-Metadata"] = resumable.encode_metadata(upload)
    response.headers["Cache-Control"] = "no-store"
    if upload.completed_at is None:
        response.headers["Upload-Expires"] = resumable.expires_header(upload.expires_at)
    else:
        response.headers["Caesar-File-Id"] = upload.id
    return response


@blp.route("/uploads", methods=["OPTIONS"], endpoint="discover_all")
@blp.doc(summary="tus discovery: the version, extensions, largest size and checksum algorithms",
         responses={"204": {"description": "In the Tus-* headers"}})
def discover_all() -> Response:
    return Response(status=204)


@blp.route("/uploads", methods=["POST"])
@blp.doc(summary="Start a resumable upload (tus 1.0 creation; a first chunk may come in the body)",
         parameters=[TUS_HEADER,
                     {"name": "Upload-Length", "in": "header", "required": True, "description": "the file's size",
                      "schema": {"type": "integer", "minimum": 1}},
                     {"name": "Upload-Metadata", "in": "header", "required": True,
                      "description": "'filename <base64>' and optionally ',tag <base64>'",
                      "schema": {"type": "string"}}],
         responses={"201": {"description": "Created: Location is the upload's URL"},
                    **docs.errors(400, 412, 413, 415, 507), **docs.ERRORS})
def create() -> Response:
    cfg = settings()
    owner = current_owner()
    if request.headers.get("Upload-Defer-Length") is not None:
        raise BadRequest("Upload-Defer-Length is not supported: give the file's size in Upload-Length",
                         field="Upload-Defer-Length")
    length = resumable.header_int(request.headers.get("Upload-Length"), "Upload-Length")
    metadata = resumable.parse_metadata(request.headers.get("Upload-Metadata"))
    name, fmt, tag = resumable.check_new(cfg, length, metadata)
    first_chunk = bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if first_chunk and request.mimetype != resumable.CHUNK_CONTENT_TYPE:
        raise UnsupportedFormat(f"A chunk comes as {resumable.CHUNK_CONTENT_TYPE}, not "
                                f"{request.mimetype or 'no content type'}")
    quota = files_api._quota(cfg, owner)
    now = utcnow()
    upload_id = uuid.uuid4().hex
    path = resumable.part_path(cfg["DATA_DIR"], owner, upload_id)
    storage.user_dir(cfg["DATA_DIR"], owner).mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))   # private, new
    try:
        with session() as s:
            if quota is not None:
                files_api._lock_quota(s, owner)
            s.add(Upload(id=upload_id, owner=owner, filename=name, format=fmt, tag=tag, length=length, offset=0,
                         created_at=now, expires_at=resumable.new_expiry(cfg, now)))
            s.flush()           # SQLite: the INSERT takes the write lock before the sum is read (files._lock_quota)
            if quota is not None:
                used = files_api.stored_bytes(s, owner)         # this reservation included
                if used > quota:
                    raise InsufficientStorage(f"This upload of {length} bytes would exceed your quota of {quota} "
                                              f"bytes ({used - length} used or reserved by unfinished uploads); "
                                              "delete files first", used_bytes=used - length, quota_bytes=quota)
            s.commit()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    response = Response(status=201)
    response.headers["Location"] = _location(upload_id)
    if first_chunk:
        _patch(cfg, owner, upload_id, 0, response)
    else:
        with session() as s:
            _state_headers(resumable.find(s, owner, upload_id, cfg), response)
    response.status_code = 201
    return response


GONE = {"410": docs.json_response("ApiError", "The upload expired and was removed")}


@blp.route("/uploads/<upload_id>", methods=["GET"], parameters=[UPLOAD_ID])
@blp.doc(summary="A resumable upload: HEAD gives its offset in tus headers, GET the same as JSON, with the file's "
                 "record once whole (its uuid is the upload's)",
         responses={"200": docs.json_response("Upload", "The upload (HEAD: the same in tus headers, no body)"),
                    **docs.errors(400, 404, 412), **GONE, **docs.ERRORS})
def show(upload_id: str) -> Response:
    cfg = settings()
    owner = current_owner()
    with session() as s:
        upload = resumable.find(s, owner, upload_id, cfg)
        record = s.get(File, upload.id) if upload.completed_at is not None else None
        if request.method == "HEAD":
            return _state_headers(upload, Response(status=200))
        body = _view(upload, record)
    return _state_headers(upload, jsonify(body))


@blp.route("/uploads/<upload_id>", methods=["PATCH"], parameters=[UPLOAD_ID, TUS_HEADER, OFFSET_HEADER],
           endpoint="patch")
@blp.doc(summary="Append a chunk at Upload-Offset (tus); the last one makes the file",
         requestBody={"required": True, "content": {resumable.CHUNK_CONTENT_TYPE: {"schema": {
             "type": "string", "format": "binary"}}}},
         responses={"204": {"description": "Stored: Upload-Offset is the new offset (Caesar-File-Id once whole)"},
                    **docs.errors(400, 404, 409, 412, 413, 415, 507), **GONE,
                    "460": docs.json_response("ApiError", "The chunk's checksum is not Upload-Checksum's"),
                    **docs.ERRORS})
def patch(upload_id: str) -> Response:
    return _patch_request(settings(), current_owner(), upload_id)


@blp.route("/uploads/<upload_id>", methods=["DELETE"], parameters=[UPLOAD_ID, TUS_HEADER], endpoint="terminate")
@blp.doc(summary="End an upload (tus termination): its bytes are removed, a finished upload's file stays",
         responses={"204": {"description": "Removed"}, **docs.errors(400, 404, 412), **GONE, **docs.ERRORS})
def terminate(upload_id: str) -> Response:
    cfg = settings()
    with session() as s:
        upload = resumable.find(s, current_owner(), upload_id, cfg)
        resumable.remove(s, cfg, upload)
        s.commit()
    resumable.drop_running(upload_id)
    return Response(status=204)


@blp.route("/uploads/<upload_id>", methods=["OPTIONS"], parameters=[UPLOAD_ID], endpoint="discover")
@blp.doc(summary="tus discovery: the version, extensions, largest size and checksum algorithms",
         responses={"204": {"description": "In the Tus-* headers"}, **docs.errors(404), **docs.ERRORS})
def discover(upload_id: str) -> Response:
    if not UPLOAD_ID_RE.fullmatch(upload_id):
        raise NotFound(f"No upload {upload_id!r}: an upload's id is 32 lower-case hex digits")
    return Response(status=204)


def _view(upload: Upload, record: File | None) -> dict[str, Any]:
    return {"id": upload.id, "filename": upload.filename, "format": upload.format, "tag": upload.tag,
            "length": upload.length, "offset": upload.offset, "created": upload.created_at.isoformat() + "Z",
            "expires": None if upload.completed_at else upload.expires_at.isoformat() + "Z",
            "complete": upload.completed_at is not None, "url": _location(upload.id),
            "file": record.to_dict() if record is not None else None}


def _patch_request(cfg, owner: str, upload_id: str) -> Response:
    if request.mimetype != resumable.CHUNK_CONTENT_TYPE:
        raise UnsupportedFormat(f"A chunk comes as Content-Type {resumable.CHUNK_CONTENT_TYPE}, not "
                                f"{request.mimetype or 'no content type'}")
    offset = resumable.header_int(request.headers.get("Upload-Offset"), "Upload-Offset")
    response = Response(status=204)
    _patch(cfg, owner, upload_id, offset, response)
    return response


def _patch(cfg, owner: str, upload_id: str, offset: int, response: Response) -> None:
    """Append the request's body at `offset`; complete the upload when it is whole. Sets the state headers."""
    checksum = resumable.parse_checksum(request.headers.get("Upload-Checksum"))
    expected = multipart.content_length(request.environ["CONTENT_LENGTH"]) \
        if request.environ.get("CONTENT_LENGTH") else None
    with session() as s:
        upload = resumable.find(s, owner, upload_id, cfg)
        length, recorded, done = upload.length, upload.offset, upload.completed_at is not None
    if done:
        if offset == length and not expected:
            with session() as s:
                _state_headers(resumable.find(s, owner, upload_id, cfg), response)
            return
        raise Conflict(f"The upload {upload_id} is complete already", offset=length)
    path = resumable.part_path(cfg["DATA_DIR"], owner, upload_id)
    with resumable.writing(path) as fh:
        with session() as s:           # read again under the lock: another writer may have moved it
            recorded = resumable.find(s, owner, upload_id, cfg).offset
        if offset != recorded:
            raise Conflict(f"Upload-Offset {offset} is not where the upload stands: {recorded} bytes are stored "
                           "(HEAD tells)", offset=recorded)
        room = length - recorded
        if expected is not None and expected > room:
            raise files_api.PayloadTooLarge(f"The chunk of {expected} bytes goes past the upload's length: "
                                            f"{room} bytes are left", left_bytes=room)
        body = multipart.body_stream(request.environ, lambda: request.stream)
        # S3 storage hashes the file as it copies it to the bucket (S3UploadSink): nothing to keep on the way in.
        before = resumable.take_running(upload_id, recorded) if cfg.get("STORAGE") != "s3" else None
        sums = BackgroundChecksums(start=before) if before is not None else None
        try:
            written, _whole = resumable.append(fh, recorded, room, body.read, expected, checksum, sums)
        except BaseException:
            if before is not None and recorded:
                resumable.keep_running(upload_id, before)      # a refused chunk leaves the state before it whole
            raise
        finally:
            if sums is not None:
                sums.finish()
        with session() as s:
            upload = resumable.find(s, owner, upload_id, cfg)
            upload.offset = recorded + written
            upload.expires_at = resumable.new_expiry(cfg)
            s.commit()
            now_at = upload.offset
        whole_so_far = sums if sums is not None and sums.size == now_at else None
        if now_at == length:
            _complete(cfg, owner, upload_id, path, whole_so_far)
        elif whole_so_far is not None:
            resumable.keep_running(upload_id, whole_so_far)
    with session() as s:
        _state_headers(resumable.find(s, owner, upload_id, cfg), response)


def _complete(cfg, owner: str, upload_id: str, path, sums: Checksums | None = None) -> None:
    """The whole part file becomes a File of the upload's uuid, as POST /upload would register it."""
    with session() as s:
        upload = resumable.find(s, owner, upload_id, cfg)
        name, fmt, tag = upload.filename, upload.format, upload.tag
    sink: Any
    if cfg.get("STORAGE") == "s3":
        sink = s3store.S3UploadSink(s3store.store_for(cfg), owner, fmt, None, uuid=upload_id)
        for block in resumable.blocks(path):
            sink.write(block)
    else:
        sink = resumable.PartSink(path, upload_id, sums)
    record = files_api._register(cfg, owner, name, fmt, sink, tag, upload_id=upload_id)
    if isinstance(sink, resumable.PartSink):
        os.chmod(record.path, 0o440)
    path.unlink(missing_ok=True)


# OPTIONS is tus's discovery, answered by discover() and discover_all(): the other views of the same paths take none
# of Flask's automatic OPTIONS answers (Flask reads this attribute when the rule is added).
for _tus_view in (create, show, patch, terminate):
    _tus_view.provide_automatic_options = False
