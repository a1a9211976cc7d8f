"""Resumable uploads from the client (tus 1.0 on httpx, caesar_rest/client): a real network cut (a TCP proxy broken
mid-chunk) and a `caesar upload` process killed with SIGKILL, each resumed by the next run of the same file at the
server's offset, into the same upload and a file whose sha256 is the source's."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from caesar_rest.client import Client, TransportError
from caesar_rest.client.transfer import ResumeBook

from ..support import wait_until
from ..tcpproxy import TcpProxy
from .conftest import TOKENS

MiB = 1024 * 1024


def source(tmp_path: Path, size: int, name: str = "cube.fits") -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_upload_cut_by_the_network_resumes_where_it_stopped(stack, tmp_path):
    path, want = source(tmp_path, 8 * MiB)
    port = int(stack["base"].rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    book = ResumeBook(tmp_path / "uploads.json")
    seen: list[int] = []

    def cut_half_way(done: int, _total: int | None) -> None:
        seen.append(done)
        if done >= 4 * MiB:
            proxy.down()                           # the link goes while the next chunk is on its way

    with Client(f"http://127.0.0.1:{proxy.port}", token=TOKENS["alice"]) as client, \
            pytest.raises(TransportError, match="run it again to resume"):
        client.upload(path, progress=cut_half_way, chunk_size=MiB, resume_book=book)
    [url] = json.loads(book.path.read_text()).values()
    direct = stack["base"] + url[url.index("/caesar/"):]
    stored = int(requests.head(direct, headers={"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {TOKENS['alice']}"},
                               timeout=10).headers["Upload-Offset"])
    assert 3 * MiB <= stored < 8 * MiB      # the chunks answered before the cut (the one cut off was checked: dropped)
    proxy.up()
    again: list[int] = []
    with Client(f"http://127.0.0.1:{proxy.port}", token=TOKENS["alice"]) as client:
        record = client.upload(path, progress=lambda done, _t: again.append(done), chunk_size=MiB, resume_book=book)
    proxy.down()
    # Started at the server's offset, not at 0. The chunk under way at the cut may have reached the server whole and
    # been recorded after the HEAD above (CI saw 3 MiB there and 4 MiB at the resume), so the offset the client
    # resumed from is at least the one read, and at most one chunk further; a wrong one would have got a 409.
    assert stored <= again[0] <= stored + MiB and again[-1] == 8 * MiB
    assert record["uuid"] == url.rsplit("/", 1)[1] and record["sha256"] == want
    assert json.loads(book.path.read_text()) == {}                # done: nothing left to resume


def test_a_caesar_upload_killed_half_way_is_resumed_by_the_next_one(stack, tmp_path):
    path, want = source(tmp_path, 64 * MiB)
    port = int(stack["base"].rsplit(":", 1)[1])
    proxy = TcpProxy(port, rate=24 * MiB)          # a slow link: the kill comes while chunks are on their way
    config = tmp_path / "config"
    env = {**os.environ, "CAESAR_URL": f"http://127.0.0.1:{proxy.port}", "CAESAR_TOKEN": TOKENS["alice"],
           "XDG_CONFIG_HOME": str(config)}
    caesar = [str(Path(sys.executable).with_name("caesar")), "upload", "--json", str(path)]
    first = subprocess.Popen(caesar, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    book = config / "caesar" / "uploads.json"
    try:
        wait_until(lambda: book.exists() and json.loads(book.read_text()), 60, "the upload to be created")
        [url] = json.loads(book.read_text()).values()
        direct = stack["base"] + url[url.index("/caesar/"):]

        def offset() -> int:
            return int(requests.head(direct, headers={"Tus-Resumable": "1.0.0",
                                                      "Authorization": f"Bearer {TOKENS['alice']}"},
                                     timeout=10).headers["Upload-Offset"])

        wait_until(lambda: offset() >= 16 * MiB, 60, "a first chunk stored")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    stopped_at = offset()
    assert 16 * MiB <= stopped_at < 64 * MiB
    second = subprocess.run(caesar, env=env, capture_output=True, text=True, timeout=300, check=False)
    proxy.down()
    assert second.returncode == 0, second.stderr
    record = json.loads(second.stdout)
    assert record["uuid"] == url.rsplit("/", 1)[1] and record["sha256"] == want and record["size_bytes"] == 64 * MiB
    assert json.loads(book.read_text()) == {}


def test_one_request_when_asked_and_a_vanished_upload_starts_anew(client, tmp_path):
    path, want = source(tmp_path, 3 * MiB)
    book = ResumeBook(tmp_path / "uploads.json")
    plain = client.upload(path, resumable=False, resume_book=book)
    assert plain["sha256"] == want and not book.path.exists()     # POST /upload: nothing to resume
    # An upload the server no longer has (terminated, expired): the next run makes a new one.
    book.put(ResumeBook.key(client.api, path), f"{client.api}/uploads/{'0' * 32}")
    record = client.upload(path, chunk_size=MiB, resume_book=book)
    assert record["sha256"] == want and record["uuid"] != "0" * 32 and json.loads(book.path.read_text()) == {}
