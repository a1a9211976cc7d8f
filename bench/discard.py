"""`python -m bench.discard PORT`: an HTTP server that reads each request body to its end into one reused
buffer and throws it away. The upload's transport ceiling: what curl and the loopback can carry when the
server does nothing with the bytes (no parsing, no disk, no hashing)."""
from __future__ import annotations

import socket
import sys


def serve(port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port))
    buf = memoryview(bytearray(4 * 1024 * 1024))
    while True:
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    break
                head += data
            header, _, rest = head.partition(b"\r\n\r\n")
            length = 0
            for line in header.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            left = length - len(rest)
            while left > 0:
                got = conn.recv_into(buf, min(len(buf), left))
                if not got:
                    break
                left -= got
            body = b'{"discarded": %d}' % length
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


if __name__ == "__main__":
    serve(int(sys.argv[1]))
