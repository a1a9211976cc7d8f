"""API fixtures: the API as a real process (caesar-rest serve on loopback), started with the settings a test gives."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..support import Proc, embedded_settings, start_api


@pytest.fixture
def api_process(tmp_path) -> Iterator[Callable[..., tuple[Proc, str]]]:
    """start(**settings) -> (process, base URL): `caesar-rest serve` on 127.0.0.1 on the embedded default plus the
    given settings, in a root of its own; every process started is stopped at the end of the test."""
    started: list[Proc] = []

    def start(**extra: Any) -> tuple[Proc, str]:
        root = tmp_path / f"api{len(started)}"
        root.mkdir()
        proc, base = start_api(embedded_settings(root / "var", **extra), root / "api.log")
        started.append(proc)
        return proc, base

    yield start
    for proc in started:
        proc.stop()
