"""A WSGI app that reads each request body to its end, in the reads POST /upload makes (caesar_rest.multipart's
READ_SIZE, through the same LengthBound), and throws it away: the upload's ceiling on one WSGI server. Served by
gunicorn with gunicorn.conf.py and by uWSGI with uwsgi.ini, as the API is (bench/transfer.py), it gives each
server's own ceiling: what that server can hand the app, with no parsing, disk or hashing."""
from __future__ import annotations

import json

from caesar_rest.multipart import READ_SIZE, body_stream


def app(environ, start_response):
    def no_length():
        raise ValueError("the discard app needs a Content-Length")

    body = body_stream(environ, no_length)
    total = 0
    while data := body.read(READ_SIZE):
        total += len(data)
    answer = json.dumps({"discarded": total}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))])
    return [answer]
