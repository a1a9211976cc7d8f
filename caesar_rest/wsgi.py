"""WSGI entry point for uWSGI (`module = caesar_rest.wsgi:app`) and gunicorn (`caesar_rest.wsgi:app`).
Settings come from CAESAR_CONFIG and CAESAR_* like everywhere else. Load it in each worker process
(uWSGI lazy-apps, gunicorn without preload) so no database or broker connection crosses a fork.
A production server serves others: with AUTH_MODE none the app refuses to load unless ALLOW_ANONYMOUS is true."""
from __future__ import annotations

import sys

from . import create_app


def _server() -> str:
    # uWSGI's embedded `uwsgi` module exists only inside uWSGI; gunicorn has imported itself before the app.
    if "uwsgi" in sys.modules:
        return "served by uWSGI"
    if "gunicorn" in sys.modules:
        return "served by gunicorn"
    return "served by a WSGI server (caesar_rest.wsgi)"


app = create_app(served_by=_server())
application = app
