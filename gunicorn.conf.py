"""gunicorn, the alternative to uWSGI: `gunicorn -c gunicorn.conf.py caesar_rest.wsgi:app`.
nginx then talks HTTP to it (proxy_pass; see the README's Production section). Same environment knobs
as uwsgi.ini: CAESAR_WSGI_SOCKET (unix path or host:port), CAESAR_WSGI_PROCESSES, CAESAR_WSGI_THREADS."""
import os

_socket = os.environ.get("CAESAR_WSGI_SOCKET", "/run/caesar-rest/gunicorn.sock")
bind = [_socket if ":" in _socket and not _socket.startswith("/") else f"unix:{_socket}"]
workers = int(os.environ.get("CAESAR_WSGI_PROCESSES", "4"))
# gthread: a long upload or tar.gz stream holds one thread, not a whole process; the worker's main
# thread keeps heart-beating, so `timeout` only catches hung workers, not long transfers.
worker_class = "gthread"
threads = int(os.environ.get("CAESAR_WSGI_THREADS", "4"))
# Connections one process holds at most (keep-alive ones included): without a bound, the process that wins
# the accept race keeps most of the clients' keep-alive connections and its one GIL serves them all.
worker_connections = int(os.environ.get("CAESAR_WSGI_CONNECTIONS", str(threads * 2)))
timeout = 120
graceful_timeout = 60
keepalive = 5
# The app is loaded in each worker after the fork (no preload): no connection crosses a fork.
preload_app = False
max_requests = 5000
max_requests_jitter = 500
# Room for big headers (long bearer tokens); the request line and the body are not limited here.
limit_request_field_size = 32768
# The app logs one line per request (request id, status, duration); gunicorn logs only errors.
accesslog = None
errorlog = "-"
loglevel = "info"
# Trust X-Forwarded-* only from the local nginx.
forwarded_allow_ips = "127.0.0.1,::1"
umask = 0o007
