"""tuspy, the tus project's Python client, unchanged, against the API over real HTTP: an upload of a 48 MiB file
killed (SIGKILL) past half way and resumed by a new client process from the stored URL, ending in a file whose
sha256 is the source's."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap

import requests

from ..support import API, wait_until

SIZE = 48 * 1024 * 1024
CHUNK = 1024 * 1024

CLIENT = textwrap.dedent("""
    import sys, time
    from tusclient import client
    from tusclient.storage.filestorage import FileStorage

    base, path, store, pause = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    tus = client.TusClient(base + "/uploads")
    uploader = tus.uploader(path, chunk_size=int(sys.argv[5]), metadata={"filename": "survey.fits", "tag": "resumed"},
                            store_url=True, url_storage=FileStorage(store), upload_checksum=True)
    if uploader.url is None:
        uploader.set_url(uploader.create_url())
    print("URL", uploader.url, "OFFSET", uploader.offset, flush=True)
    while uploader.offset < uploader.stop_at:
        uploader.upload_chunk()
        time.sleep(pause)
    print("DONE", uploader.offset, flush=True)
""")


def test_a_tuspy_upload_killed_half_way_resumes_where_it_stopped(api_process, tmp_path):
    _proc, base = api_process()
    source = tmp_path / "survey.fits"
    source.write_bytes(os.urandom(SIZE))
    want = hashlib.sha256(source.read_bytes()).hexdigest()
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    store = tmp_path / "tus-urls.json"
    first = subprocess.Popen([sys.executable, str(script), base + API, str(source), str(store), "0.02", str(CHUNK)],
                             stdout=subprocess.PIPE, text=True)
    try:
        line = first.stdout.readline().split()
        assert line[0] == "URL" and line[3] == "0", line
        url = line[1]

        def offset() -> int:
            return int(requests.head(url, headers={"Tus-Resumable": "1.0.0"}, timeout=10).headers["Upload-Offset"])

        wait_until(lambda: offset() >= SIZE // 2, 120, "the first client to send half the file")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    stopped_at = offset()
    assert SIZE // 2 <= stopped_at < SIZE
    second = subprocess.run([sys.executable, str(script), base + API, str(source), str(store), "0", str(CHUNK)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 0, second.stderr
    started = second.stdout.split()
    assert started[0] == "URL" and started[1] == url            # the stored URL, not a new upload
    assert int(started[3]) == stopped_at                         # it asked the server and went on from there
    assert f"DONE {SIZE}" in second.stdout
    upload_id = url.rsplit("/", 1)[1]
    record = requests.get(url, timeout=10).json()
    assert record["complete"] and record["file"]["uuid"] == upload_id
    assert record["file"]["sha256"] == want and record["file"]["size_bytes"] == SIZE
    assert record["file"]["tag"] == "resumed" and record["file"]["filename_orig"] == "survey.fits"
    download = requests.get(f"{base}{API}/download/{upload_id}", timeout=60)
    assert hashlib.sha256(download.content).hexdigest() == want
