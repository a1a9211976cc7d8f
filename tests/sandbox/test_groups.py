"""The job sandbox's control groups, with real bubblewrap and the machine's cgroup hierarchy."""
from __future__ import annotations

import subprocess
from pathlib import Path

from workers.sandbox import SYSTEM_PATH, Sandbox, SandboxSpec

from ..support import embedded_settings


def test_jobs_of_one_name_get_groups_of_their_own(tmp_path):
    """A TES task's executors share the job id and start one after the other while the group of the one before may
    still be there (it is removed in the background): each start makes a group of its own. Before the groups were
    numbered, the second start failed with FileExistsError (seen in CI as 'Executor 3 could not start')."""
    sandbox = Sandbox(embedded_settings(tmp_path / "var"))
    sandbox.check()
    spec = SandboxSpec(argv=["/bin/true"], cwd="/", env={"PATH": SYSTEM_PATH})
    started = [sandbox.start(spec, subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL, "one-task-id")
               for _ in range(2)]
    try:
        assert [s.popen.wait(timeout=30) for s in started] == [0, 0]
        groups = [s.groups for s in started]
        assert all(g is not None for g in groups)
        assert groups[0].dirs != groups[1].dirs
    finally:
        for s in started:
            sandbox.release(s)


def test_a_job_is_born_in_its_group_and_the_worker_thread_goes_back(tmp_path):
    """On v1 the starting thread enters the job's group for the fork (no move of another process, whose global lock
    waits out an RCU grace period): the job's processes are inside from the first, its cgroup namespace is rooted at
    its group, the pids limit still counts the job's own processes, and the worker's thread is back in its group."""
    sandbox = Sandbox({**embedded_settings(tmp_path / "var"), "SANDBOX_PIDS_MAX": 8})
    sandbox.check()
    own = Path("/proc/thread-self/cgroup")
    before = own.read_text()
    script = "grep pids /proc/self/cgroup; i=0; while [ $i -lt 20 ]; do sleep 5 & i=$((i+1)); done"
    spec = SandboxSpec(argv=["/bin/sh", "-c", script], cwd="/", env={"PATH": SYSTEM_PATH}, limits=sandbox.limits(None))
    started = sandbox.start(spec, subprocess.DEVNULL, subprocess.PIPE, subprocess.STDOUT, "born-inside")
    try:
        assert own.read_text() == before
        out, _ = started.popen.communicate(timeout=30)
    finally:
        sandbox.release(started)
    lines = out.decode().splitlines()
    if sandbox.cgroups is not None and sandbox.cgroups.hierarchies:
        assert lines[0].endswith(":pids:/"), lines
    assert "Cannot fork" in out.decode(), lines
