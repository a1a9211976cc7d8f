"""A streaming multipart/form-data reader for POST /upload: big reads, one search per read, file parts
written straight to their sink.

werkzeug's general parser feeds its state machine 64 KiB at a time and copies every block through a
bytearray before handing it on; for a 1 GiB upload that was most of the API's CPU. This reader asks the
WSGI stream for 1 MiB at a time, looks for the part delimiter with one `bytes.find` per read (plus a short
probe across the seam between two reads) and passes the data on as memoryview slices, never joined.
Only what an upload form needs: named fields, at most MAX_PARTS parts, small text fields kept in memory
(MAX_FIELD_BYTES each), file parts streamed to whatever `open_file(field, filename)` returns."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_options_header

from .errors import BadRequest
from .numbers import parse_int


class Reader(Protocol):
    """What the parser needs of a request body: read(n) (a WSGI input, werkzeug's stream, LengthBound)."""

    def read(self, size: int, /) -> bytes: ...

READ_SIZE = 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16


class Form:
    """What the body held: text fields by name, and (field name, file name, sink) for each file part."""

    def __init__(self) -> None:
        self.fields: dict[str, list[str]] = {}
        self.files: list[tuple[str, str | None, Any]] = []

    def get(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None


def boundary_of(content_type: str) -> bytes:
    _, options = parse_options_header(content_type)
    boundary = options.get("boundary", "")
    # RFC 2046 says 1 to 70 characters; some clients (werkzeug's test client among them) go a little over.
    if not boundary or len(boundary) > 200 or not boundary.isascii() or boundary != boundary.rstrip():
        raise BadRequest("The multipart body has no usable boundary in its Content-Type")
    return boundary.encode("ascii")


class LengthBound:
    """The WSGI input of a body of known length, read directly: werkzeug's LimitedStream copies every read
    twice (into a bytearray, then out of it), which for a 1 GiB upload cost more than the disk write.
    Never asks the server for more than the body holds, so the connection's next request stays intact."""

    def __init__(self, raw: Reader, length: int) -> None:
        self.raw = raw
        self.left = length

    def read(self, size: int) -> bytes:
        if self.left <= 0:
            return b""
        data = self.raw.read(min(size, self.left))
        self.left -= len(data)
        return data


def body_stream(environ: dict, fallback: Callable[[], Reader]) -> Reader:
    """The request body: LengthBound when Content-Length is given, else fallback() (werkzeug's stream,
    which handles chunked bodies)."""
    raw = environ.get("CONTENT_LENGTH") or ""
    if not raw:         # a length wins over Transfer-Encoding: nginx de-chunks a body and passes both headers on
        return fallback()
    return LengthBound(environ["wsgi.input"], content_length(raw))


def content_length(raw: str) -> int:
    """A Content-Length header's value, strictly (caesar_rest.numbers): digits only, or a 400."""
    text = raw.strip(" \t")
    if text[:1] in ("+", "-"):           # RFC 9110: 1*DIGIT, no sign
        raise BadRequest(f"The Content-Length header must be written in digits 0-9, not {raw!r}")
    return parse_int(text, "The Content-Length header", 0, None)


class _Reader:
    """The body as a sequence of reads, with what was read but not yet used in `pending`."""

    def __init__(self, stream: Reader) -> None:
        self.stream = stream
        self.pending = b""
        self.ended = False

    def more(self) -> bytes:
        try:
            data = self.stream.read(READ_SIZE)
        except HTTPException:       # werkzeug's own: body over MAX_CONTENT_LENGTH (413), client gone (400)
            raise
        except Exception as exc:    # the server's: connection reset, malformed chunked encoding...
            raise BadRequest(f"The upload could not be read to its end ({exc.__class__.__name__}: {exc})") from exc
        if not data:
            self.ended = True
            raise BadRequest("The multipart body ended before its closing boundary (upload cut short?)")
        return data

    def until(self, marker: bytes, limit: int, what: str) -> bytes:
        """Bytes up to marker, consumed with it; BadRequest when more than limit bytes come first."""
        buf = self.pending
        start = 0
        while True:
            at = buf.find(marker, start, limit + len(marker))
            if at >= 0:
                self.pending = buf[at + len(marker):]
                return buf[:at]
            if len(buf) > limit + len(marker):
                raise BadRequest(f"The multipart {what} is longer than {limit} bytes")
            start = max(0, len(buf) - len(marker) + 1)
            buf += self.more()

    def drain(self, limit: int = 64 * 1024) -> None:
        """Read what follows the closing delimiter (an epilogue, if any) so the connection stays usable."""
        seen = len(self.pending)
        self.pending = b""
        while seen <= limit:
            try:
                data = self.stream.read(READ_SIZE)
            except Exception:
                return
            if not data:
                return
            seen += len(data)


def parse(stream: Reader, content_type: str, open_file: Callable[[str, str], Any]) -> Form:
    """Read the whole body; a file part goes to open_file(field name, file name).write as it arrives.
    On a BadRequest the sinks already opened are the caller's to discard: open_file is where it keeps them."""
    form = Form()
    reader = _Reader(stream)
    try:
        first = reader.more()
    except BadRequest:
        if reader.ended:
            return form                 # no body at all: an empty form, "no file" for the caller to say
        raise
    boundary = boundary_of(content_type)
    # Preamble up to the first delimiter line, which has no CRLF before it when it opens the body.
    reader.pending = b"\r\n" + first
    reader.until(b"\r\n--" + boundary, 64 * 1024, "preamble")
    delimiter = b"\r\n--" + boundary
    parts = 0
    while True:
        # After a delimiter: "--" closes the body, else transport padding then CRLF and the next part.
        while len(reader.pending) < 2:
            reader.pending += reader.more()
        if reader.pending[:2] == b"--":
            reader.drain()
            break
        reader.until(b"\r\n", 1024, "delimiter line")
        parts += 1
        if parts > MAX_PARTS:
            raise BadRequest(f"The upload has more than {MAX_PARTS} multipart parts")
        name, filename = _part_headers(reader.until(b"\r\n\r\n", MAX_HEADER_BYTES, "part header"))
        # An empty part may have its delimiter's CRLF shared with the header block's end (RFC 2046 allows
        # "headers CRLF" then the delimiter): put it back so the search below finds the delimiter at once.
        while len(reader.pending) < len(delimiter) - 2:
            reader.pending += reader.more()
        if reader.pending.startswith(delimiter[2:]):
            reader.pending = b"\r\n" + reader.pending
        if filename is None:
            value = _field(reader, delimiter, name)
            form.fields.setdefault(name, []).append(value)
        else:
            sink = open_file(name, filename)
            form.files.append((name, filename, sink))
            _stream_to(reader, delimiter, sink.write)
    return form


def _part_headers(raw: bytes) -> tuple[str, str | None]:
    disposition = None
    for line in raw.split(b"\r\n"):
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == b"content-disposition":
            disposition = value.decode("utf-8", "surrogateescape").strip()
    if disposition is None:
        raise BadRequest("A multipart part has no Content-Disposition header")
    kind, options = parse_options_header(disposition)
    if kind.lower() != "form-data" or "name" not in options:
        raise BadRequest("A multipart part is not a named form-data field")
    return options["name"], options.get("filename")


def _field(reader: _Reader, delimiter: bytes, name: str) -> str:
    raw = reader.until(delimiter, MAX_FIELD_BYTES, f"field {name!r}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"The multipart field {name!r} is not UTF-8 text", field=name) from None


def _stream_to(reader: _Reader, delimiter: bytes, write: Callable[[Any], Any]) -> None:
    """Pass everything before the next delimiter to write(), as memoryview slices of the reads.
    A read's last len(delimiter) - 1 bytes are held back until the next read shows whether the delimiter
    starts there; the seam is probed with a join of two short slices, the big reads are never joined."""
    keep = len(delimiter) - 1
    held = reader.pending
    while True:
        at = held.find(delimiter)
        if at >= 0:
            if at:
                write(memoryview(held)[:at])
            reader.pending = held[at + len(delimiter):]
            return
        if len(held) > keep:
            write(memoryview(held)[:len(held) - keep])
            held = held[len(held) - keep:]
        data = reader.more()
        if len(data) < keep:                # a short read: decide when more has come
            held += data
            continue
        at = (held + data[:keep]).find(delimiter)
        if 0 <= at < len(held):             # the delimiter starts in the held-back tail
            if at:
                write(memoryview(held)[:at])
            reader.pending = data[at + len(delimiter) - len(held):]
            return
        if held:
            write(held)
        held = data
