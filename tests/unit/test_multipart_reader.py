"""caesar_rest.multipart, cut at every offset: the same body read in two (and three) pieces split anywhere gives the
same form; boundaries at their edges; bodies that end early; parts over their limits; header injection; the file
names a client may send. (tests/api/test_multipart.py has the random-read and malformed-body cases.)"""
from __future__ import annotations

import io
import itertools

import pytest

from caesar_rest import multipart, storage
from caesar_rest.errors import BadRequest

CT = "multipart/form-data; boundary=B"


class Pieces(io.RawIOBase):
    """A body delivered in the given pieces, one per read (a read never returns more than asked)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = [p for p in pieces if p]

    def read(self, n: int = -1) -> bytes:
        if not self.pieces:
            return b""
        head = self.pieces[0]
        if 0 <= n < len(head):
            self.pieces[0] = head[n:]
            return head[:n]
        return self.pieces.pop(0)


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, block) -> int:
        self.data += block
        return len(block)


def parse(stream, content_type: str = CT) -> tuple[dict[str, list[str]], list[tuple[str, str, bytes]]]:
    opened: list[tuple[str, str, Sink]] = []

    def open_file(field: str, filename: str) -> Sink:
        opened.append((field, filename, Sink()))
        return opened[-1][2]

    form = multipart.parse(stream, content_type, open_file)
    return form.fields, [(f, n, bytes(s.data)) for f, n, s in opened]


def parse_bytes(raw: bytes, content_type: str = CT):
    return parse(io.BytesIO(raw), content_type)


def refusal(raw: bytes, content_type: str = CT) -> str:
    with pytest.raises(BadRequest) as caught:
        parse_bytes(raw, content_type)
    return caught.value.message


def part(name: str, content: bytes, filename: str | None = None, boundary: bytes = b"B") -> bytes:
    def quoted(text: str) -> str:          # an RFC 7230 quoted-string, as werkzeug reads it back
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    disp = f"form-data; name={quoted(name)}" + (f"; filename={quoted(filename)}" if filename is not None else "")
    return b"--" + boundary + b"\r\nContent-Disposition: " + disp.encode() + b"\r\n\r\n" + content + b"\r\n"


# Data salted with every prefix of the delimiter "\r\n--B" and with look-alikes that are not delimiters.
TRICKY = b"\r\r\n\r\n-\r\n--\r\n-B\n--B--B\r--B"
BODY = (b"preamble line\r\n" + part("tag", b"first") + part("file", TRICKY, "a.bin") + part("tag", b"second")
        + part("file", b"", "empty.txt") + b"--B--\r\nepilogue")
WANTED = ({"tag": ["first", "second"]}, [("file", "a.bin", TRICKY), ("file", "empty.txt", b"")])


def test_a_well_formed_body_gives_every_field_and_file():
    assert parse_bytes(BODY) == WANTED


@pytest.mark.parametrize("cut", range(1, len(BODY)))
def test_two_reads_split_anywhere_give_the_same_form(cut):
    assert parse(Pieces([BODY[:cut], BODY[cut:]])) == WANTED


def test_three_reads_split_at_any_two_offsets_give_the_same_form():
    small = part("f", b"x\r\n-", "f.bin") + b"--B--"
    for i, j in itertools.combinations(range(1, len(small)), 2):
        assert parse(Pieces([small[:i], small[i:j], small[j:]])) == ({}, [("f", "f.bin", b"x\r\n-")]), (i, j)


def test_one_byte_per_read():
    assert parse(Pieces([bytes([b]) for b in BODY])) == WANTED


# ---- boundaries ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("boundary", ["B", "x" * 70, "----WebKitFormBoundary7MA4YWxkTrZu0gW", "'()+_,-./:=?",
                                      "a" * 200])
def test_a_boundary_of_any_allowed_form_works(boundary):
    b = boundary.encode()
    look_alike = b"x--" + b + b"--\n--" + b        # the boundary without the CRLF that makes it a delimiter
    raw = part("tag", b"v", boundary=b) + part("file", look_alike, "f", boundary=b) + b"--" + b + b"--"
    assert parse_bytes(raw, f'multipart/form-data; boundary="{boundary}"') == \
        ({"tag": ["v"]}, [("file", "f", look_alike)])


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary=",
                                          'multipart/form-data; boundary="' + "a" * 201 + '"',
                                          'multipart/form-data; boundary="trailing "',
                                          "multipart/form-data; boundary=\u00e9t\u00e9"])
def test_an_unusable_boundary_is_refused(content_type):
    assert "no usable boundary" in refusal(part("f", b"x") + b"--B--", content_type)


def test_the_boundary_s_place_among_other_parameters_does_not_matter():
    raw = part("x", b"v") + b"--B--"
    assert parse_bytes(raw, "multipart/form-data; charset=utf-8; boundary=B") == ({"x": ["v"]}, [])
    assert parse_bytes(raw, "Multipart/Form-Data; BOUNDARY=B") == ({"x": ["v"]}, [])


def test_transport_padding_after_a_delimiter_is_skipped_but_bounded():
    raw = b"--B \t \r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nv\r\n--B--"
    assert parse_bytes(raw) == ({"x": ["v"]}, [])
    assert "delimiter line is longer than 1024" in refusal(b"--B" + b" " * 2000 + raw[3:])


def test_a_body_of_only_the_closing_delimiter_is_an_empty_form():
    assert parse_bytes(b"--B--") == parse_bytes(b"--B--\r\n") == ({}, [])


@pytest.mark.parametrize("tail", [b"", b"\r\n", b"\r\n--", b"\r\n--B", b"\r\n--B\r\n", b"\r\n--B-",
                                  b"\r\n--B\r\nContent-Disposition: form-data; name=\"y\"\r\n"])
def test_a_body_without_its_closing_delimiter_is_refused(tail):
    raw = b"--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\ndata" + tail
    assert "ended before its closing boundary" in refusal(raw)


# ---- limits ----------------------------------------------------------------------------------------------------------
def test_a_file_part_is_not_bound_by_the_field_limit():
    content = b"z" * (multipart.MAX_FIELD_BYTES * 3)
    assert parse_bytes(part("file", content, "big.bin") + b"--B--") == ({}, [("file", "big.bin", content)])


def test_a_field_at_its_limit_is_taken_and_one_byte_over_is_refused():
    at = b"t" * multipart.MAX_FIELD_BYTES
    assert parse_bytes(part("tag", at) + b"--B--")[0] == {"tag": [at.decode()]}
    assert "field 'tag' is longer than" in refusal(part("tag", at + b"t") + b"--B--")


def test_a_part_header_block_over_its_limit_is_refused():
    raw = b"--B\r\nContent-Disposition: form-data; name=\"x\"\r\nX-Pad: " + b"p" * multipart.MAX_HEADER_BYTES
    assert "part header is longer than" in refusal(raw + b"\r\n\r\nv\r\n--B--")


def test_parts_up_to_the_limit_are_taken_and_one_more_is_refused():
    most = b"".join(part(f"f{i}", b"v") for i in range(multipart.MAX_PARTS))
    assert len(parse_bytes(most + b"--B--")[0]) == multipart.MAX_PARTS
    assert "more than" in refusal(most + part("extra", b"v") + b"--B--")


# ---- header injection and file names ---------------------------------------------------------------------------------
def test_a_value_that_looks_like_a_part_is_data_of_its_own_part():
    injected = b"x\r\nContent-Disposition: form-data; name=\"admin\"\r\n\r\ntrue"
    fields, files = parse_bytes(part("tag", injected) + b"--B--")
    assert fields == {"tag": [injected.decode()]} and files == []


def test_a_line_break_in_a_file_name_cannot_add_a_header_or_reach_the_sink_s_name():
    raw = (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\r\n"
           b"Content-Disposition: form-data; name=\"other\"; x=\"\r\n\r\ndata\r\n--B--")
    fields, files = parse_bytes(raw)
    assert all("\r" not in n and "\n" not in n for _f, n, _d in files)
    assert len(fields) + len(files) == 1           # still one part, whatever name it ends up with


def test_quoted_and_encoded_names_are_read_as_rfc_7578_writes_them():
    raw = (b"--B\r\ncontent-disposition :form-data; NAME=\"a\\\"b\"\r\n\r\nv\r\n"
           b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename*=UTF-8''%C3%BCber%20all.fits\r\n\r\n"
           b"d\r\n--B--")
    assert parse_bytes(raw) == ({'a"b': ["v"]}, [("file", "über all.fits", b"d")])


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "dir/a.fits", "C:\\Users\\me\\a.fits", "..",
                                  "..hidden", ""])
def test_a_file_name_with_a_path_reaches_the_upload_as_sent_and_is_refused_there(name):
    """The reader passes the client's name on untouched; storage.check_filename (the upload's next step) refuses it,
    so no name chooses where a file lands."""
    _fields, files = parse_bytes(part("file", b"d", name) + b"--B--")
    assert files == [("file", name, b"d")]
    with pytest.raises(BadRequest):
        storage.check_filename(name)


@pytest.mark.parametrize("name", ["a.fits", "VGPS_cont_MOS017.fits", "über.txt", "with space.tar.gz", ".dotfile"])
def test_a_plain_file_name_is_kept(name):
    assert storage.check_filename(parse_bytes(part("file", b"d", name) + b"--B--")[1][0][1]) == name


def test_content_length_is_digits_only():
    assert multipart.content_length(" 12 ") == 12
    for bad in ("+5", "-1", "1e3", "0x10", "١٢", "12 34", ""):
        with pytest.raises(BadRequest):
            multipart.content_length(bad)


def test_a_length_bound_stream_never_reads_past_the_body():
    raw = io.BytesIO(b"0123456789NEXT REQUEST")
    bound = multipart.LengthBound(raw, 10)
    assert bound.read(4) + bound.read(100) + bound.read(100) == b"0123456789"
    assert raw.read() == b"NEXT REQUEST"
