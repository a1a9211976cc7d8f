"""A container's followed log stream that does not end with the container (seen once with Podman under load,
a job then FAILED although its program succeeded): after log_drain_timeout the stream is abandoned and the log
read whole. Podman cannot be made to hang on demand, so a stand-in engine serves the three calls involved
(inspect, the followed logs that never end, the whole logs); everything else is the real backend code."""
from __future__ import annotations

import json
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from workers.backends.container import ContainerBackend, LogPump

HANDLE = "f" * 64
STDOUT = b"line one\nline two\nthe end\n"


def frame(stream: int, data: bytes) -> bytes:
    """The engine's multiplexed log frame (non-TTY containers)."""
    return struct.pack(">BxxxL", stream, len(data)) + data


class StuckEngine(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path.endswith(f"/containers/{HANDLE}/json"):
            body = json.dumps({"Id": HANDLE, "Config": {"Tty": False}, "State": {"Running": False}}).encode()
            self._send(body, "application/json")
        elif url.path.endswith(f"/containers/{HANDLE}/logs"):
            which = 1 if query.get("stdout") == ["1"] else 2
            data = frame(which, STDOUT[:9]) if which == 1 else b""
            if query.get("follow") == ["1"]:
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.docker.raw-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if data:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                self.release.wait(60)           # the stream stays open well past the container's end...
                late = frame(which, b"late bytes\n")
                self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(late), late))   # ...then says more, and ends
                self.wfile.flush()
            else:
                self._send(frame(which, STDOUT) if which == 1 else b"", "application/vnd.docker.raw-stream")
        else:
            self._send(b'{"message": "not here"}', "application/json", 404)

    def _send(self, body: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_followed_log_that_never_ends_is_read_whole_after_the_drain_timeout(tmp_path):
    StuckEngine.release.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), StuckEngine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"tcp://127.0.0.1:{server.server_address[1]}"
    try:
        backend = ContainerBackend({}, {"base_url": base_url, "log_drain_timeout": 0.5})
        pumps = {"stdout": LogPump(base_url, backend.api_version, HANDLE, "stdout", tmp_path / "stdout.log"),
                 "stderr": LogPump(base_url, backend.api_version, HANDLE, "stderr", tmp_path / "stderr.log")}
        backend._pumps[HANDLE] = pumps
        deadline = time.time() + 10
        while (tmp_path / "stdout.log").read_bytes() != STDOUT[:9] and time.time() < deadline:
            time.sleep(0.05)                    # the pump has written what the stream gave so far
        assert (tmp_path / "stdout.log").read_bytes() == STDOUT[:9]
        t0 = time.monotonic()
        backend.fetch_outputs(HANDLE, tmp_path)            # no BackendError: the job's outcome stands
        assert 0.5 <= time.monotonic() - t0 < 5
        assert (tmp_path / "stdout.log").read_bytes() == STDOUT          # whole, once, not doubled
        assert (tmp_path / "stderr.log").read_bytes() == b""
        StuckEngine.release.set()
        pumps["stdout"].thread.join(5)
        assert not pumps["stdout"].thread.is_alive()
        assert (tmp_path / "stdout.log").read_bytes() == STDOUT          # the abandoned pump wrote nothing more
    finally:
        StuckEngine.release.set()
        server.shutdown()
