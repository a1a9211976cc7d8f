"""A small HTTP/1.1 client for the benchmarks: keep-alive connections on raw sockets, so the client spends as
little of the machine's two cores as possible (requests/urllib3 would cost about as much as the server)."""
from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any


def _request_bytes(method: str, path: str, host: str, body: bytes | None = None,
                   content_type: str = "application/json", headers: dict[str, str] | None = None) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    head += [f"{key}: {value}" for key, value in (headers or {}).items()]
    if body is not None:
        head += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + (body or b"")


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    return status, headers


class Connection:
    """One blocking keep-alive connection (sequential latency measurements)."""

    def __init__(self, base: str) -> None:
        hostport = base.split("://", 1)[1].rstrip("/")
        self.host, _, port = hostport.partition(":")
        self.port = int(port or 80)
        self.hostport = hostport
        self.sock: socket.socket | None = None
        self.buf = b""
        self.headers: dict[str, str] = {}       # the last response's headers, names in lower case

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        return sock

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        raw = _request_bytes(method, path, self.hostport, data, headers=headers)
        for attempt in (0, 1):
            if self.sock is None:
                self.sock = self._connect()
            try:
                self.sock.sendall(raw)
                return self._response()
            except (ConnectionError, _Closed):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise _Closed()
            self.buf += chunk
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _read_n(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise _Closed()
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _response(self) -> tuple[int, bytes]:
        status, headers = _parse_head(self._read_until(b"\r\n\r\n"))
        self.headers = headers
        if "content-length" in headers:
            body = self._read_n(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                parts.append(self._read_n(size))
                self._read_n(2)
                if size == 0:
                    break
            body = b"".join(parts)
        else:
            body = b""
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class _Closed(Exception):
    pass


@dataclass
class LoadResult:
    elapsed: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if 200 <= code < 300)


async def _worker(base_host: str, port: int, hostport: str, raw: bytes, counter: list[int], total: int,
                  result: LoadResult, keep_bodies: bool) -> None:
    reader = writer = None
    while True:
        if counter[0] >= total:
            break
        counter[0] += 1
        for attempt in (0, 1):
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(base_host, port)
                    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                t0 = time.perf_counter()
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                status, headers = _parse_head(head[:-4])
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                result.latencies.append(time.perf_counter() - t0)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if keep_bodies:
                    result.bodies.append(body)
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    reader = writer = None
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                if writer is not None:
                    writer.close()
                reader = writer = None
                if attempt:
                    result.statuses[-1] = result.statuses.get(-1, 0) + 1
    if writer is not None:
        writer.close()


def load(base: str, method: str, path: str, body: Any, total: int, concurrency: int,
         keep_bodies: bool = False) -> LoadResult:
    """`total` identical requests over `concurrency` keep-alive connections; elapsed wall time and latencies."""
    hostport = base.split("://", 1)[1].rstrip("/")
    host, _, port = hostport.partition(":")
    data = None if body is None else json.dumps(body).encode()
    raw = _request_bytes(method, path, hostport, data)

    async def main() -> LoadResult:
        result = LoadResult(0.0)
        counter = [0]
        t0 = time.perf_counter()
        await asyncio.gather(*(_worker(host, int(port), hostport, raw, counter, total, result, keep_bodies)
                               for _ in range(concurrency)))
        result.elapsed = time.perf_counter() - t0
        return result

    return asyncio.run(main())
