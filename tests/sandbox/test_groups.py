"""The job sandbox's control groups, with real bubblewrap and the machine's cgroup hierarchy."""
from __future__ import annotations

import subprocess

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
