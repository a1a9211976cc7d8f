"""The baseline worker: the same Celery configuration as caesar-rest's pools, with one empty task and no job
state around it. `celery -A bench.bare worker -Q <prefix>bare`; settings come from CAESAR_* like the real one."""
from __future__ import annotations

from caesar_rest.celery_app import make_celery
from caesar_rest.config import load_settings

NOOP_TASK = "bench.noop"

settings = load_settings()
app = make_celery(settings)


@app.task(name=NOOP_TASK, ignore_result=False)
def noop() -> None:
    """Nothing: a round trip of this task is the broker + result store + worker cost alone."""
