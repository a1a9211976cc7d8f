"""The environment of TES host-runtime executors is the operator's settings (TES_HOST_PATH, TES_HOST_ENV) plus the
task's env, nothing of the worker's; and a task directory over a tools directory (workdir /tmp, as Snakemake's
plugin sets it, over tools kept under /tmp) does not hide the tools. Real API and worker processes."""
from __future__ import annotations

import pytest

from caesar_rest.tes_access import AccessConfigError, check_settings

from ..support import embedded_settings, start_api, start_worker
from .conftest import TOKENS, USERS, Tes

TOOL = "#!/bin/sh\necho \"tool ran from $0\"\ncat /tmp/in.txt\nenv | sort > /tmp/env.txt\n"


@pytest.fixture(scope="module")
def host_env_stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("host-env")      # under /tmp (pytest's base): a /tmp task mount covers it
    tools = base / "tools"
    (tools / "bin").mkdir(parents=True)
    (tools / "bin" / "caesar-test-tool").write_text(TOOL)
    (tools / "bin" / "caesar-test-tool").chmod(0o755)
    base.chmod(0o755)
    settings = embedded_settings(base / "var", AUTH_MODE="token", AUTH_USERS=USERS, TES_HOST_RUNTIME=True,
                                 TES_HOST_PATH=f"{tools}/bin:/usr/bin:/bin",
                                 TES_HOST_ENV={"LC_ALL": "C.UTF-8", "SURVEY": "emu"},
                                 SANDBOX_READ_ONLY_PATHS=[str(tools)])
    worker = start_worker(settings, ["local"], base / "worker.log", concurrency=1)
    try:
        api, url = start_api(settings, base / "api.log")
    except Exception:
        worker.stop()
        raise
    yield url, tools
    api.stop()
    worker.stop()


def test_tools_under_a_task_mount_stay_visible_and_the_environment_is_the_settings(host_env_stack):
    url, tools = host_env_stack
    tes = Tes(url, TOKENS["alice"])
    task = tes.run({
        "inputs": [{"path": "/tmp/in.txt", "content": "input in the task's /tmp\n"}],
        "executors": [{"image": "alpine", "command": ["caesar-test-tool"], "workdir": "/tmp",
                       "env": {"SURVEY": "askap"}}]}, timeout=120)
    stdout = task["logs"][0]["logs"][0]["stdout"]
    assert task["state"] == "COMPLETE", task
    assert f"tool ran from {tools}/bin/caesar-test-tool" in stdout
    assert "input in the task's /tmp" in stdout


def test_executor_environment_holds_nothing_of_the_worker(host_env_stack):
    url, tools = host_env_stack
    tes = Tes(url, TOKENS["alice"])
    task = tes.run({"executors": [{"image": "alpine", "command": ["/bin/sh", "-c", "env | sort"], "workdir": "/tmp",
                                   "env": {"SURVEY": "askap"}}]}, timeout=120)
    assert task["state"] == "COMPLETE", task
    env = dict(line.split("=", 1) for line in task["logs"][0]["logs"][0]["stdout"].splitlines() if "=" in line)
    assert env["PATH"] == f"{tools}/bin:/usr/bin:/bin"
    assert env["LC_ALL"] == "C.UTF-8" and env["SURVEY"] == "askap"      # the task's env over TES_HOST_ENV
    assert env["HOME"] == "/tmp" and env["TMPDIR"] == "/tmp"
    leaked = sorted(k for k in env if (k.startswith("CAESAR_") and k != "CAESAR_JOB_ID")
                    or k in ("VIRTUAL_ENV", "PYTHONPATH", "USER", "LOGNAME"))
    assert not leaked, leaked
    assert set(env) <= {"PATH", "HOME", "LANG", "TMPDIR", "LC_ALL", "SURVEY", "OMP_NUM_THREADS", "CAESAR_JOB_ID",
                        "PWD", "SHLVL", "_"}, sorted(env)


@pytest.mark.parametrize("settings, words", [
    ({"TES_HOST_PATH": "bin:/usr/bin"}, "TES_HOST_PATH"),
    ({"TES_HOST_PATH": ""}, "TES_HOST_PATH"),
    ({"TES_HOST_ENV": {"PATH": "/x"}}, "TES_HOST_PATH is the executors' PATH"),
    ({"TES_HOST_ENV": {"BAD NAME": "x"}}, "variable name"),
    ({"TES_HOST_ENV": {"N": 3}}, "string value"),
])
def test_unusable_host_environment_settings_stop_the_start(tmp_path, settings, words):
    with pytest.raises(AccessConfigError, match=words):
        check_settings({**embedded_settings(tmp_path), **settings})
