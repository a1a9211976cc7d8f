"""Job kinds as an interface: every kind names a worker side that implements workers.kinds.KindRun, and no kind
reaches into the runner's private parts."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from kombu.utils.imports import symbol_by_name

from caesar_rest.kinds import KINDS, worker_of
from workers.kinds import KindRun

REPO = Path(__file__).resolve().parents[2]
PROTOCOL_METHODS = [name for name, value in vars(KindRun).items()
                    if (callable(value) and not name.startswith("_")) or name in ("__enter__", "__exit__")]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_has_a_worker_side_with_the_whole_interface(kind):
    worker = symbol_by_name(worker_of(kind))
    assert KINDS[kind].name == kind
    for name in PROTOCOL_METHODS:
        method = getattr(worker, name, None)
        assert callable(method), f"{worker.__name__} lacks {name}()"
        wanted = list(inspect.signature(getattr(KindRun, name)).parameters)
        assert list(inspect.signature(method).parameters)[:len(wanted)] == wanted, (worker.__name__, name)
    assert isinstance(getattr(worker, "running_message", None), str)
    assert {"stage", "steps", "step_ended", "finish"} <= set(PROTOCOL_METHODS)


def test_an_unknown_kind_is_named():
    with pytest.raises(LookupError, match="'ogc'"):
        worker_of("ogc")


def test_no_kind_calls_the_runner_s_private_methods():
    offenders = []
    for path in sorted((REPO / "workers").rglob("*.py")):
        if path.name == "runner.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\brunner\._[a-z]", line, re.IGNORECASE):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, offenders
