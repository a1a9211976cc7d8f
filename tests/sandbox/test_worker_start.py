"""A worker of the local pool refuses to start when its jobs could not be sandboxed (workers.tasks'
start-up check), and says why; SANDBOX: none starts with a warning. Real worker processes, real bubblewrap."""
from __future__ import annotations

import os

import pytest

from caesar_rest.db import upgrade

from ..support import embedded_settings, start_worker


def _settings(tmp_path, **extra):
    settings = embedded_settings(tmp_path, **extra)
    upgrade(f"sqlite:///{tmp_path}/caesar.db")
    return settings


def test_a_local_worker_refuses_to_run_jobs_as_root(tmp_path):
    settings = _settings(tmp_path, SANDBOX_USER="root")
    if os.geteuid() != 0:       # (CI runs as root) a worker that is not root runs jobs as itself: the key is unread
        worker = start_worker(settings, ["local"], tmp_path / "worker.log")
        try:
            assert "SANDBOX_USER is not used" in worker.log()
        finally:
            worker.stop()
        return
    with pytest.raises(RuntimeError, match="worker exited at start") as info:
        start_worker(settings, ["local"], tmp_path / "worker.log")
    assert "refusing to start" in str(info.value) and "SANDBOX_USER is root" in str(info.value)


def test_a_local_worker_refuses_a_cgroup_it_cannot_use(tmp_path):
    with pytest.raises(RuntimeError, match="worker exited at start") as info:
        start_worker(_settings(tmp_path, SANDBOX_CGROUP=str(tmp_path / "not-a-cgroup")), ["local"],
                     tmp_path / "worker.log")
    assert "refusing to start" in str(info.value) and "no per-job pids limit is possible" in str(info.value)


def test_sandbox_none_starts_and_says_it_is_unsafe(tmp_path):
    worker = start_worker(_settings(tmp_path, SANDBOX="none"), ["local"], tmp_path / "worker.log")
    try:
        assert "SANDBOX is none: jobs run unsandboxed" in worker.log()
    finally:
        worker.stop()


def test_a_worker_of_another_pool_does_not_check_the_sandbox(tmp_path):
    worker = start_worker(_settings(tmp_path, SANDBOX_USER="root", BACKENDS={"local": {}, "container": {}}),
                          ["container"], tmp_path / "worker.log")
    try:
        assert "refusing to start" not in worker.log()
    finally:
        worker.stop()
