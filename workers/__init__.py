"""Celery worker entry point: `celery -A workers worker -Q <pool>`; settings come from CAESAR_* / CAESAR_CONFIG."""
from __future__ import annotations

from caesar_rest.celery_app import make_celery
from caesar_rest.config import load_settings
from caesar_rest.tes_access import check_settings

settings = load_settings()
check_settings(settings)         # a worker refuses to start on TES transfer settings it cannot use
celery = make_celery(settings)
app = celery
