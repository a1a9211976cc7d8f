"""How a TES executor becomes the JobSpec of a backend: a container (image, argv = command, the task directories
mounted at their paths) or, with the host runtime, the local backend's sandbox running workers/tes_launcher.py."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caesar_rest.backends import BackendError, JobSpec, backend_class
from caesar_rest.tes_task import norm

from .tes_launcher import SANDBOX_LAUNCHER, SANDBOX_PYTHON, STATUS_PATH

if TYPE_CHECKING:
    from .tes import TaskRun

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LAUNCHER = Path(__file__).resolve().with_name("tes_launcher.py")


def executor_spec(task: TaskRun, i: int, executor: dict[str, Any]) -> JobSpec:
    """Executor i of the task as the JobSpec its backend runs."""
    env = dict(executor.get("env") or {})
    common: dict[str, Any] = dict(job_id=task.job_id, owner=task.owner, app="tes", workdir=task.jobdir,
                                  cpus=float(task.spec.get("cpus") or 1), memory_mb=task.spec.get("memory_mb"),
                                  time_limit_s=int(task.time_limit))
    mounts = {m: str(task.host_path(m)) for m in task.mounts}
    if task.backend_name == "local":
        return _host_job_spec(task, i, executor, env, common)
    options = (task.settings.get("BACKENDS") or {}).get(task.backend_name) or {}
    if not backend_class(task.backend_name, options).runs_tes(options):
        raise BackendError(f"TES executors run on the local (host runtime) or container backend, or a backend that "
                           f"runs them (a slurm backend with a container runtime), not on {task.backend_name!r}")
    _open_to_group(task.fs)           # the container's user (not root) writes through the group
    return JobSpec(argv=list(executor["command"]), image=executor["image"], env=env, **common,
                   options={**(task.spec.get("backend_options") or {}),
                            "tes": {"index": i, "mounts": mounts, "workdir": executor.get("workdir"),
                                    "stdin": str(task.inside(task.host_path(executor["stdin"])))
                                    if executor.get("stdin") else None}})


def batch_spec(task: TaskRun) -> JobSpec:
    """The whole task as one job of a remote backend that runs several executors in order (Backend.tes_batch: the
    slurm backend's script, workers/backends/slurm_tes.py): each executor's image, argv, env, workdir and the host
    paths of its streams (checked by the script when it opens them: an earlier executor may have written there)."""
    first = executor_spec(task, 0, task.doc["executors"][0])        # the checks, and what the job itself needs
    executors = [{"argv": list(ex["command"]), "image": ex["image"], "env": dict(ex.get("env") or {}),
                  "workdir": ex.get("workdir"), "ignore_error": bool(ex.get("ignore_error")),
                  "paths": {key: ex[key] for key in ("stdin", "stdout", "stderr") if ex.get(key)},   # as named
                  **{key: str(task.host_path(ex[key])) if ex.get(key) else None
                     for key in ("stdin", "stdout", "stderr")}} for ex in task.doc["executors"]]
    tes = first.options["tes"]
    return dataclasses.replace(first, env={}, options={**first.options, "tes": {   # each executor has its own env
        "index": "task", "mounts": tes["mounts"], "fs": str(task.fs), "executors": executors}})


def _host_job_spec(task: TaskRun, i: int, executor: dict[str, Any], env: dict[str, str],
                   common: dict[str, Any]) -> JobSpec:
    """A host-runtime executor: the local backend runs it in the job sandbox, the task directories bound at
    their paths (staged inputs read-only), through workers/tes_launcher.py (stdin/stdout/stderr opened inside
    the sandbox, as the sandbox user, then the command exec()ed unchanged)."""
    status = task.meta / f"executor-{i}.status"
    status.write_bytes(b"")
    binds = [[str(task.host_path(m)), m, True] for m in task.mounts]
    for item in task.doc.get("inputs") or []:
        binds.append([str(task.inside(task.host_path(item["path"]))), norm(item["path"]), False])
    # The launcher and its interpreter at a place of their own: a task directory may cover their host paths
    # (a Nextflow task mounts /work, an ancestor of a venv in /work/...).
    base = os.path.realpath(sys.base_prefix)
    python = os.path.realpath(sys.executable)
    if not python.startswith(base + "/"):
        raise BackendError(f"the worker's interpreter {python} is not under its prefix {base}")
    # What the executors need that a task directory would cover (a Snakemake task's workdir /tmp over a tools'
    # venv in /tmp, a task's /opt over /opt/tool): the read-only paths bound again, over the task's binds.
    binds += [[path, path, False] for path in _covered(task.settings, task.mounts)]
    binds += [[base, SANDBOX_PYTHON, False], [str(LAUNCHER), SANDBOX_LAUNCHER, False],
              [str(status), STATUS_PATH, True]]
    launch = {"argv": executor["command"], "workdir": executor.get("workdir"), "stdin": executor.get("stdin"),
              "stdout": executor.get("stdout"), "stderr": executor.get("stderr"), "status": STATUS_PATH}
    # Built from settings and the task alone: nothing of the worker's own environment (TES_HOST_PATH, TES_HOST_ENV).
    env = {"PATH": str(task.settings.get("TES_HOST_PATH") or HOST_PATH), "HOME": executor.get("workdir") or "/tmp",
           "LANG": "C.UTF-8", "TMPDIR": "/tmp", **(task.settings.get("TES_HOST_ENV") or {}), **env}
    if any(base == m or base.startswith(m.rstrip("/") + "/") for m in task.mounts):
        # The interpreter finds its libpython by an absolute RUNPATH under a covered path: point the loader at
        # the copy under SANDBOX_PYTHON for the launcher alone, and give the command its own value back.
        launch["restore_env"] = {"LD_LIBRARY_PATH": env.get("LD_LIBRARY_PATH")}
        env["LD_LIBRARY_PATH"] = f"{SANDBOX_PYTHON}/lib"
    argv = [SANDBOX_PYTHON + python[len(base):], "-I", SANDBOX_LAUNCHER, "exec", json.dumps(launch)]
    return JobSpec(argv=argv, image=executor["image"], env=env, **common,
                   options={"image_recorded": executor["image"],
                            "host_task": {"binds": binds, "cwd": "/",
                                          "network": bool(task.settings.get("TES_HOST_NETWORK"))}})


def _covered(settings: Any, mounts: Any) -> list[str]:
    """The sandbox's read-only code paths (the worker's venv, SANDBOX_READ_ONLY_PATHS) that a task mount hides."""
    from .sandbox import code_paths

    under = [m.rstrip("/") or "/" for m in mounts]
    return [p for p in code_paths(list(settings.get("SANDBOX_READ_ONLY_PATHS") or []))
            if any(p == m or p.startswith(m.rstrip("/") + "/") for m in under)]


def _open_to_group(root: Path) -> None:
    """Group read/write on the task's files (and search on its directories) for a container's user."""
    for dirpath, _dirs, names in os.walk(root):
        for path in [dirpath] + [os.path.join(dirpath, n) for n in names]:
            st = os.lstat(path)
            if not os.path.islink(path):
                wanted = st.st_mode | (0o070 if os.path.isdir(path) else 0o060)
                if wanted != st.st_mode:
                    os.chmod(path, wanted)
