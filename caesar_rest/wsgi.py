"""WSGI entry point for uWSGI (`module = caesar_rest.wsgi:app`) and gunicorn (`caesar_rest.wsgi:app`).
Settings come from CAESAR_CONFIG and CAESAR_* like everywhere else. Load it in each worker process
(uWSGI lazy-apps, gunicorn without preload) so no database or broker connection crosses a fork."""
from __future__ import annotations

from . import create_app

app = create_app()
application = app
