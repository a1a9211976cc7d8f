"""Backends for /health tests: one whose health() answers, one whose health() raises, one that hangs."""
from __future__ import annotations

import time

from workers.backends.base import BackendUnavailable
from workers.backends.local import LocalBackend


class HealthyBackend(LocalBackend):
    name = "healthy"

    def health(self) -> dict:
        return {"status": "ok", "slots": 2}


class BrokenBackend(LocalBackend):
    name = "broken"

    @staticmethod
    def health() -> None:
        raise BackendUnavailable("server at 127.0.0.1:9 refused the connection")


class HangingBackend(LocalBackend):
    name = "hanging"
    calls = 0

    def health(self) -> None:
        HangingBackend.calls += 1
        time.sleep(3)


class PlainBackend:
    """A backend class with no health() at all: /health can only say it is unchecked."""

    name = "plain"
    blocking = True
    job_options = ()

    def __init__(self, settings, options) -> None:
        pass
