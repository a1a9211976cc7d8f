"""caesar_rest.multipart on its own: the body cut into reads of every size, delimiters straddling reads,
look-alike delimiters inside the data, and the malformed bodies a client can send."""
from __future__ import annotations

import io
import os
import random

import pytest

from caesar_rest import multipart
from caesar_rest.errors import BadRequest


class Trickle(io.RawIOBase):
    """A stream whose read(n) returns at most a random number of bytes, as a slow network does."""

    def __init__(self, data: bytes, rng: random.Random, most: int) -> None:
        self.data, self.pos, self.rng, self.most = data, 0, rng, most

    def read(self, n: int = -1) -> bytes:
        k = min(n if n >= 0 else len(self.data), self.rng.randint(1, self.most))
        out = self.data[self.pos:self.pos + k]
        self.pos += len(out)
        return out


class Collect:
    def __init__(self) -> None:
        self.data = bytearray()
        self.writes = 0

    def write(self, block) -> int:
        self.data += block
        self.writes += 1
        return len(block)


def body(boundary: bytes, parts: list[tuple[str, str | None, bytes]], preamble: bytes = b"",
         epilogue: bytes = b"") -> bytes:
    out = [preamble]
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out.append(b"--" + boundary + b"\r\nContent-Disposition: " + disp.encode() + b"\r\n")
        if filename is not None:
            out.append(b"Content-Type: application/octet-stream\r\n")
        out.append(b"\r\n" + content + b"\r\n")
    out.append(b"--" + boundary + b"--\r\n" + epilogue)
    return b"".join(out)


def parse(raw: bytes, boundary: bytes, stream=None):
    files: dict[str, Collect] = {}

    def open_file(field: str, filename: str) -> Collect:
        files[filename] = Collect()
        return files[filename]

    form = multipart.parse(stream or io.BytesIO(raw), f'multipart/form-data; boundary="{boundary.decode()}"',
                           open_file)
    return form, files


@pytest.mark.parametrize("seed", range(40))
def test_random_reads_give_back_every_byte(seed):
    rng = random.Random(seed)
    boundary = ("b" + os.urandom(rng.randint(1, 30)).hex()).encode()
    delimiter = b"\r\n--" + boundary
    # Data salted with prefixes of the delimiter (everything but its last byte), the seam's hard case.
    pieces = []
    for _ in range(rng.randint(0, 30)):
        pieces.append(os.urandom(rng.randint(0, 3000)))
        pieces.append(delimiter[:rng.randint(1, len(delimiter) - 1)])
    content = b"".join(pieces)
    # A prefix followed by random bytes can complete the delimiter (1 in 256 for a 3-character boundary); a
    # client picks a boundary its data does not contain, so the data here must not contain it either.
    while delimiter in content:
        content = content.replace(delimiter, delimiter[:-1])
    raw = body(boundary, [("tag", None, b"t-" + str(seed).encode()), ("file", "a.bin", content),
                          ("file", "empty.bin", b"")], preamble=b"ignored preamble\r\n", epilogue=b"epilogue")
    most = rng.choice([1, 7, len(delimiter) - 1, len(delimiter), 100, 5000, 1 << 20])
    form, files = parse(raw, boundary, Trickle(raw, rng, most))
    assert bytes(files["a.bin"].data) == content
    assert bytes(files["empty.bin"].data) == b""
    assert form.get("tag") == f"t-{seed}"
    assert [f[0] for f in form.files] == ["file", "file"]


def test_big_part_is_written_in_big_pieces():
    boundary = b"XyZ"
    content = os.urandom(5 * 1024 * 1024 + 17)
    _form, files = parse(body(boundary, [("file", "big.fits", content)]), boundary)
    assert bytes(files["big.fits"].data) == content
    assert files["big.fits"].writes <= 2 * 6 + 2          # ~two writes per 1 MiB read, not thousands


def test_empty_part_sharing_its_crlf_with_the_headers():
    # werkzeug's encoder writes an empty file part as headers, CRLF, then the delimiter line at once.
    raw = (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"e.txt\"\r\n\r\n"
           b"--B\r\nContent-Disposition: form-data; name=\"tag\"\r\n\r\nx\r\n--B--\r\n")
    form, files = parse(raw, b"B")
    assert bytes(files["e.txt"].data) == b"" and form.get("tag") == "x"


def test_no_body_is_an_empty_form():
    form = multipart.parse(io.BytesIO(b""), "multipart/form-data", lambda *a: None)
    assert form.files == [] and form.fields == {}


@pytest.mark.parametrize("raw, content_type, words", [
    (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nhalf of it",
     "multipart/form-data; boundary=B", "ended before its closing boundary"),
    (b"--B\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n--B--\r\n", "multipart/form-data",
     "no usable boundary"),
    (b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--\r\n", "multipart/form-data; boundary=B",
     "no Content-Disposition"),
    (b"--B\r\nContent-Disposition: attachment; name=\"f\"\r\n\r\nx\r\n--B--\r\n", "multipart/form-data; boundary=B",
     "not a named form-data field"),
    (b"--B\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n\xff\xfe\r\n--B--\r\n",
     "multipart/form-data; boundary=B", "not UTF-8"),
    (b"--B\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\nx\r\n--B--\r\n", "multipart/form-data; boundary=B",
     "part header is longer"),
    (b"--B\r\nContent-Disposition: form-data; name=\"tag\"\r\n\r\n" + b"t" * 70000 + b"\r\n--B--\r\n",
     "multipart/form-data; boundary=B", "field 'tag' is longer"),
    (b"".join(b"--B\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n" for _ in range(17)) + b"--B--\r\n",
     "multipart/form-data; boundary=B", "more than 16 multipart parts"),
    (b"no delimiter anywhere" * 5000, "multipart/form-data; boundary=B", "preamble is longer"),
])
def test_malformed_bodies_are_400_naming_the_problem(raw, content_type, words):
    with pytest.raises(BadRequest) as caught:
        multipart.parse(io.BytesIO(raw), content_type, lambda field, name: Collect())
    assert words in caught.value.message


def test_a_failing_stream_is_a_400():
    class Broken(io.RawIOBase):
        calls = 0

        def read(self, n=-1):
            self.calls += 1
            if self.calls > 1:
                raise OSError("connection reset by peer")
            return b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nsome"

    with pytest.raises(BadRequest) as caught:
        multipart.parse(Broken(), "multipart/form-data; boundary=B", lambda field, name: Collect())
    assert "could not be read to its end" in caught.value.message and "connection reset" in caught.value.message


def test_upload_sink_hashes_on_its_thread_and_matches_the_file(tmp_path):
    import hashlib
    import threading

    from caesar_rest import s3store, storage

    before = threading.active_count()
    sink = storage.UploadSink(tmp_path, limit=None)
    blocks = [os.urandom(random.randint(0, 300_000)) for _ in range(40)]
    for block in blocks:
        sink.write(memoryview(block)[1:])
    data = b"".join(b[1:] for b in blocks)
    sink.commit(tmp_path / "final.bin")
    assert threading.active_count() == before           # the hashing thread ended with the sink
    assert (tmp_path / "final.bin").read_bytes() == data
    assert sink.sha256 == hashlib.sha256(data).hexdigest() == s3store.checksums_of(tmp_path / "final.bin").sha256
    assert sink.crc64nvme == s3store.checksums_of(tmp_path / "final.bin").crc64nvme and sink.size == len(data)


def test_upload_sink_over_its_limit_counts_but_stops_writing(tmp_path):
    from caesar_rest import storage

    sink = storage.UploadSink(tmp_path, limit=1000)
    for _ in range(5):
        sink.write(b"x" * 600)
    assert sink.size == 3000 and sink.tmp_path.stat().st_size == 600
    sink.discard()
    assert list(tmp_path.iterdir()) == []


def test_checksum_thread_errors_reach_the_caller():
    from caesar_rest import s3store

    sums = s3store.BackgroundChecksums()
    sums.update(b"fine")
    sums.update(object())           # not a buffer: hashlib raises TypeError on the thread
    with pytest.raises(TypeError):
        sums.finish()
