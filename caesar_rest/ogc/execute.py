"""An OGC execute request made into a caesar-rest job request (POST /job's body, validated by the app kind exactly as
POST /job is), plus what OGC adds: which outputs, how each is transmitted, raw or document.

File inputs: {"href": ...} to a file uploaded here (its /download-id or /download URL, or its uuid; owner-checked by the
app kind's resolver), {"href": "https://..."} to an external file (fetched now under the egress rules, up to
OGC_REMOTE_INPUT_MAX_BYTES, and kept as an upload of the caller), or inline {"value", "mediaType", "encoding":
"base64"} up to OGC_INLINE_MAX_BYTES. Files made for a request that is then refused are removed again."""
from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import egress, s3store, storage
from ..apps import MAX_STRING, App
from ..errors import BadRequest, CaesarError, InvalidOption, PayloadTooLarge, UnsupportedFormat
from ..jobs import UUID_HEX_RE
from .openapi import BASE64_RE, HREF_RE as _HREF, SUBSCRIBER_RE as _SUBSCRIBER
from .processes import ARCHIVE, outputs

MODES = ("value", "reference")
RESPONSES = ("raw", "document")
DOWNLOAD_RE = re.compile(r"/download(?:-id)?/([0-9a-f]{32})/?$")   # /download-id/<uuid> or /download/<uuid>
FIELDS = ("inputs", "outputs", "response", "subscriber")
# The patterns the execution paths' document gives (openapi.py), matched whole.
HREF_RE, SUBSCRIBER_RE, B64_RE = re.compile(_HREF), re.compile(_SUBSCRIBER), re.compile(BASE64_RE)
LINK_KEYS = {"href", "type", "rel", "title", "hreflang"}
INLINE_KEYS = {"value", "encoding", "mediaType", "schema"}


@dataclass
class Execution:
    body: dict[str, Any]                              # the caesar-rest job request
    outputs: dict[str, str]                           # output id -> transmission mode, in the order asked
    response: str = "document"
    subscriber: dict[str, str] | None = None
    made_files: list[str] = field(default_factory=list)    # uuids of the files stored for this request


def _bad_input(name: str, why: str) -> InvalidOption:
    return InvalidOption(f"Input {name!r}: {why}", option=name)


def parse(settings: Mapping[str, Any], app: App, doc: Any, host: str, owner: str,
          response: str | None = None) -> Execution:
    """Check the request's shape and build the job request; file inputs that must be stored are stored (their
    uuids in made_files: the caller removes them if the job is then refused)."""
    if not isinstance(doc, dict):
        raise BadRequest("The execute request must be a JSON object with 'inputs'")
    extra = sorted(set(doc) - set(FIELDS))
    if extra:
        raise BadRequest(f"Unknown field {extra[0]!r} in the execute request; expected {list(FIELDS)}",
                         field=extra[0])
    if response is not None and response not in RESPONSES:
        raise BadRequest(f"Query parameter 'response' must be raw or document, not {response!r}",
                         parameter="response")
    mode = doc.get("response", "document" if response is None else response)
    if mode not in RESPONSES:
        raise BadRequest(f"'response' must be raw or document, not {mode!r}", field="response")
    selected = _outputs(app, doc.get("outputs"))
    subscriber = _subscriber(doc.get("subscriber"))
    raw_inputs = doc.get("inputs", {})
    if not isinstance(raw_inputs, dict):
        raise BadRequest("'inputs' must be a JSON object of input id -> value", field="inputs")
    execution = Execution(body={"app": app.name, "job_inputs": {}}, outputs=selected, response=mode,
                          subscriber=subscriber)
    try:
        for name, value in raw_inputs.items():
            opt = app.options.get(name)
            if opt is None:
                raise InvalidOption(f"Unknown input {name!r} of process {app.name!r}; see "
                                    f"/ogcapi/processes/{app.name}", option=name)
            if isinstance(value, list):
                raise _bad_input(name, "takes one value (maxOccurs 1), not a list")
            if opt.type == "file":
                execution.body["job_inputs"][name] = _file(settings, owner, host, name, value, execution.made_files)
            else:
                execution.body["job_inputs"][name] = _literal(name, value)
    except BaseException:
        remove_files(settings, execution.made_files)
        raise
    return execution


def _literal(name: str, value: Any) -> Any:
    if isinstance(value, dict):
        if "value" not in value or set(value) - {"value", "mediaType", "encoding", "schema"}:
            raise _bad_input(name, "give the value itself, or {\"value\": ...}")
        value = value["value"]
        if isinstance(value, dict | list):
            raise _bad_input(name, "takes a single value")
    return value


def _outputs(app: App, asked: Any) -> dict[str, str]:
    known = outputs(app)
    if asked is None:
        # Every output; the archive (the whole job directory) by reference, the files by value.
        return {ident: ("reference" if ident == ARCHIVE else "value") for ident in known}
    if not isinstance(asked, dict) or not asked:
        raise BadRequest("'outputs' must be a JSON object of output id -> {\"transmissionMode\": ...}",
                         field="outputs")
    chosen: dict[str, str] = {}
    for ident, given in asked.items():
        if ident not in known:
            raise BadRequest(f"Unknown output {ident!r} of process {app.name!r}; outputs are {list(known)}",
                             field="outputs", output=ident)
        how = given
        if not isinstance(how, dict) or set(how) - {"transmissionMode", "format"}:
            raise BadRequest(f"Output {ident!r}: give {{\"transmissionMode\": \"value\"|\"reference\"}}",
                             field="outputs", output=ident)
        mode = how.get("transmissionMode", "value")
        if mode not in MODES:
            raise BadRequest(f"Output {ident!r}: transmissionMode must be value or reference, not {mode!r}",
                             field="outputs", output=ident)
        fmt = how.get("format")
        if fmt is not None:
            if not isinstance(fmt, dict) or set(fmt) - {"mediaType", "encoding", "schema"} or not isinstance(
                    fmt.get("encoding", ""), str):
                raise BadRequest(f"Output {ident!r}: 'format' is an object of mediaType, encoding (strings) and "
                                 "schema", field="outputs", output=ident)
            wanted = fmt.get("mediaType", known[ident].media_type)
            if wanted != known[ident].media_type:
                raise BadRequest(f"Output {ident!r} is {known[ident].media_type}, not {wanted}",
                                 field="outputs", output=ident)
        chosen[ident] = mode
    return chosen


def _subscriber(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"successUri", "inProgressUri", "failedUri"}:
        raise BadRequest("'subscriber' takes successUri, inProgressUri and failedUri", field="subscriber")
    for key, uri in value.items():
        if not isinstance(uri, str) or not SUBSCRIBER_RE.fullmatch(uri):
            raise BadRequest(f"subscriber.{key} must be an http(s) URL naming a host (a name or an IPv4 address), "
                             "without credentials, spaces or control characters", field="subscriber")
    return dict(value)


def _file(settings: Mapping[str, Any], owner: str, host: str, name: str, value: Any, made: list[str]) -> str:
    """What the app kind's file resolver takes: an uploaded file's uuid (or path)."""
    if isinstance(value, str):
        return value                                  # a uuid or path, as POST /job takes it
    if not isinstance(value, dict):
        raise _bad_input(name, "give {\"href\": ...} or {\"value\": <base64>, \"encoding\": \"base64\"}")
    if "href" in value:
        href = value["href"]
        if set(value) - LINK_KEYS or not all(isinstance(v, str) for v in value.values()):
            raise _bad_input(name, f"a link takes href, {', '.join(sorted(LINK_KEYS - {'href'}))} (strings)")
        if not HREF_RE.fullmatch(href) or len(href) > MAX_STRING:
            raise _bad_input(name, "'href' must be an uploaded file's uuid or an http(s) URL naming a host")
        if UUID_HEX_RE.match(href):
            return href
        parts = urlsplit(href)
        ours = DOWNLOAD_RE.search(parts.path)
        if ours and parts.netloc == host:
            return ours.group(1)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _bad_input(name, f"{href!r} is neither an uploaded file's uuid nor an http(s) URL")
        uuid = _fetch(settings, owner, name, href)
    elif "value" in value:
        if set(value) - INLINE_KEYS or not isinstance(value.get("mediaType", ""), str):
            raise _bad_input(name, "an inline file takes value, encoding, mediaType (a string) and schema")
        uuid = _inline(settings, owner, name, value)
    else:
        raise _bad_input(name, "give {\"href\": ...} or {\"value\": ..., \"encoding\": \"base64\"}")
    made.append(uuid)
    return uuid


def _inline(settings: Mapping[str, Any], owner: str, name: str, value: dict[str, Any]) -> str:
    data, encoding = value["value"], value.get("encoding", "utf-8")
    if not isinstance(data, str) or not data:
        raise _bad_input(name, "an inline file's 'value' must be a string, not empty (base64 with \"encoding\": "
                               "\"base64\")")
    if encoding == "base64":
        if not B64_RE.fullmatch(data):
            raise _bad_input(name, "'value' is not valid base64 (whole groups of four, '=' padding at the end)")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise _bad_input(name, "'value' is not valid base64") from None
    elif encoding in ("utf-8", "utf8"):
        raw = data.encode("utf-8")
    else:
        raise _bad_input(name, f"encoding must be base64 or utf-8 (the default), not {encoding!r}")
    cap = int(settings["OGC_INLINE_MAX_BYTES"])
    if len(raw) > cap:
        raise PayloadTooLarge(f"Input {name!r}: {len(raw)} bytes inline, more than OGC_INLINE_MAX_BYTES ({cap}); "
                              "upload the file and give its href", input=name)
    suffix = _suffix_for(value.get("mediaType"))
    return _store(settings, owner, name, f"{name}{suffix}", [raw], cap)


def _suffix_for(media_type: Any) -> str:
    from .processes import MEDIA_TYPES

    for suffix, mtype in MEDIA_TYPES.items():
        if mtype == media_type:
            return suffix
    return ".dat"


def _fetch(settings: Mapping[str, Any], owner: str, name: str, url: str) -> str:
    cap = int(settings["OGC_REMOTE_INPUT_MAX_BYTES"])
    rules = egress.Rules.from_settings(settings)
    try:
        _final, response = egress.http_request(rules, "GET", url, float(settings["TES_TRANSFER_TIMEOUT"]))
    except (egress.EgressRefused, egress.RedirectRefused) as exc:
        raise _bad_input(name, f"{egress.redact(url)} is not reachable for jobs: {exc}") from None
    except Exception as exc:
        raise _bad_input(name, f"{egress.redact(url)} could not be fetched: {exc.__class__.__name__}") from None
    try:
        if response.status != 200:
            raise _bad_input(name, f"{egress.redact(url)} answered HTTP {response.status}")
        filename = Path(urlsplit(url).path).name or f"{name}.dat"
        try:
            filename = storage.check_filename(filename)
        except CaesarError:
            filename = f"{name}.dat"
        return _store(settings, owner, name, filename, _within(response, name, url,
                                                              float(settings["OGC_REMOTE_INPUT_TIMEOUT"])), cap)
    finally:
        response.close()


def _within(response: Any, name: str, url: str, limit: float) -> Iterator[bytes]:
    """The response's body as it arrives (read1: what is there, never waiting for a full block), as long as it
    comes within limit seconds in all."""
    deadline = time.monotonic() + limit
    while chunk := response.read1(64 * 1024):
        if time.monotonic() > deadline:
            raise _bad_input(name, f"{egress.redact(url)} took more than {limit:g} s to fetch "
                                   "(OGC_REMOTE_INPUT_TIMEOUT); upload the file and give its href")
        yield chunk


def _store(settings: Mapping[str, Any], owner: str, name: str, filename: str, chunks: Iterable[bytes],
           cap: int) -> str:
    """The bytes as an uploaded file of owner (quota and formats as POST /upload applies them); its uuid."""
    from ..api.files import _register

    fmt = storage.file_format(filename)
    allowed = settings.get("ALLOWED_FORMATS")
    if allowed and fmt not in allowed:
        raise UnsupportedFormat(f"Input {name!r}: files of format {fmt!r} are not accepted; allowed: "
                                f"{', '.join(allowed)}", input=name)
    sink: s3store.S3UploadSink | storage.UploadSink
    if settings.get("STORAGE") == "s3":
        sink = s3store.S3UploadSink(s3store.store_for(settings), owner, fmt, cap)
    else:
        sink = storage.UploadSink(storage.user_dir(settings["DATA_DIR"], owner), cap)
    try:
        for chunk in chunks:
            sink.write(chunk)
            if sink.size > cap:
                raise PayloadTooLarge(f"Input {name!r} is larger than {cap} bytes", input=name)
        if sink.size == 0:
            raise _bad_input(name, "the file is empty")
        record = _register(settings, owner, filename, fmt, sink, "ogc-input")
    except BaseException:
        sink.discard()
        raise
    return record.uuid


def remove_files(settings: Mapping[str, Any], uuids: list[str]) -> None:
    """Remove the files stored for a request that was refused: nothing half-created."""
    if not uuids:
        return
    from sqlalchemy import delete, select

    from ..db import session_scope
    from ..models import File

    with session_scope(settings["DATABASE_URL"]) as s:
        paths = list(s.scalars(select(File.path).where(File.uuid.in_(uuids))))
        s.execute(delete(File).where(File.uuid.in_(uuids)))
    for path in paths:
        if s3store.is_s3(path):
            s3store.store_for(settings).delete(path)
        else:
            Path(path).unlink(missing_ok=True)
