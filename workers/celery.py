"""Celery worker entry module: `celery -A workers.celery worker -Q <pool>` (and `beat`, `inspect`, `flower`).

The one place a worker's Celery app is built: from the settings (CAESAR_CONFIG's file and CAESAR_* variables) by
caesar_rest.celery_app.make_celery, as the API builds its own; importing this module is what builds it. The tasks
are shared tasks in workers/tasks.py, bound to this app when it loads them (make_celery's include)."""
from __future__ import annotations

from caesar_rest.celery_app import make_celery
from caesar_rest.config import load_settings
from caesar_rest.tes_access import check_settings

settings = load_settings()
check_settings(settings)         # a worker refuses to start on TES transfer settings it cannot use
app = celery = make_celery(settings)
