"""Files: upload (several at once by drag and drop, each with its progress bar), the table, download, delete;
a file an active job reads is kept and the page says which job."""
from __future__ import annotations

from flask import Response, jsonify, redirect, request, url_for
from sqlalchemy import select

from ..api import files as files_api, tus as tus_api
from ..api.common import session
from ..auth import owner_filter
from ..errors import CaesarError, status_of
from ..jobs import file_in_use, get_file
from ..models import File
from . import blp, page


def _rows() -> list[dict]:
    with session() as s:
        query = select(File).order_by(File.created_at.desc())
        owner = owner_filter()
        if owner is not None:
            query = query.where(File.owner == owner)
        rows = []
        for record in s.scalars(query):
            rows.append({**record.to_dict(), "owner": record.owner, "in_use": file_in_use(s, record.uuid)})
        return rows


#: The size of each tus chunk the page sends: what a cut can cost, and one request's worth of progress.
CHUNK_BYTES = 16 * 1024 * 1024


@blp.route("/files")
def files():
    return page("files.html", files=_rows(), notice=request.args.get("notice"), error=request.args.get("error"),
                chunk_bytes=CHUNK_BYTES)


# ---- resumable uploads: the API's tus views, signed in by the session (and its CSRF token) ------------------------
def _tus(view, *args) -> Response:
    tus_api._tus_version()
    response = view(*args)
    location = response.headers.get("Location")
    if location:
        response.headers["Location"] = url_for("ui.tus_one", upload_id=location.rsplit("/", 1)[1])
    return tus_api._tus_headers(response)


@blp.route("/files/uploads", methods=["POST"])
def tus_create() -> Response:
    """tus creation for the page's script (tus-js-client), as POST /caesar/api/v1.0/uploads."""
    return _tus(tus_api.create)


@blp.route("/files/uploads/<upload_id>", methods=["GET", "PATCH", "DELETE"])
def tus_one(upload_id: str) -> Response:
    """HEAD (the offset), PATCH (a chunk) and DELETE of one of the user's uploads, as under the API."""
    if request.method == "PATCH":
        return _tus(tus_api.patch, upload_id)
    if request.method == "DELETE":
        return _tus(tus_api.terminate, upload_id)
    return _tus(tus_api.show, upload_id)


@blp.route("/files/upload", methods=["POST"])
def upload():
    """One file per request, through the API's upload (the page's script sends each of several files alone;
    without script the form sends one and comes back to the table)."""
    scripted = request.headers.get("X-CSRF-Token") is not None
    try:
        answer = files_api.upload().get_json()
    except CaesarError as exc:
        if scripted:
            raise
        return redirect(url_for("ui.files", error=exc.message), code=303)
    if scripted:
        return jsonify(answer)
    return redirect(url_for("ui.files", notice=f"Uploaded {answer['filename_orig']}"), code=303)


@blp.route("/files/<file_id>/download")
def download(file_id: str):
    return files_api.download(file_id)


@blp.route("/files/<file_id>/delete", methods=["POST"])
def delete(file_id: str):
    with session() as s:
        record = get_file(s, owner_filter(), file_id)
        name = record.filename_orig
    try:
        files_api.delete(file_id)
    except CaesarError as exc:
        return page("files.html", status_of(type(exc))[0], files=_rows(), notice=None,
                    error=exc.message)
    return redirect(url_for("ui.files", notice=f"Deleted {name}"), code=303)
