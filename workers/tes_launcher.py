"""Host-runtime launcher of TES executors (TES_HOST_RUNTIME), run inside the job sandbox as the sandbox user:
`python -I workers/tes_launcher.py exec SPEC_JSON` (workers/tes.py builds the spec; the local backend's bubblewrap
sandbox has already bound the task directories at their paths). It opens the executor's stdin/stdout/stderr, as
the job and inside its view of the filesystem (a link planted by an earlier executor reaches nothing of the host's),
changes to its workdir and exec()s the command unchanged, so the command's process is the job's process (no shell
is added). Standard library only: it runs before any project import.
"""
from __future__ import annotations

import json
import os
import sys

SETUP_FAILED = 125          # the launcher's exit status when the executor could not be set up (docker's too)
# Where the sandbox binds this file, the interpreter running it, and the file the task runner reads a reason from.
SANDBOX_LAUNCHER = "/.caesar/tes_launcher.py"
SANDBOX_PYTHON = "/.caesar/python"
STATUS_PATH = "/.caesar/executor-status"


def _redirect(spec: dict) -> None:
    for fd, key, flags in ((0, "stdin", os.O_RDONLY), (1, "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                           (2, "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        if spec.get(key):
            opened = os.open(spec[key], flags | os.O_CLOEXEC, 0o644)
            os.dup2(opened, fd)
            os.close(opened)


def launch(spec: dict) -> int:
    """Redirect, change directory and exec the command; returns only on failure."""
    try:
        _redirect(spec)
        os.chdir(spec.get("workdir") or "/")
    except Exception as exc:
        reason = f"{exc.__class__.__name__}: {exc}"
        with open(spec["status"], "w", encoding="utf-8") as fh:
            fh.write(reason)
        print(f"caesar-rest TES: executor setup failed: {reason}", file=sys.stderr, flush=True)
        return SETUP_FAILED
    argv = spec["argv"]
    env = dict(os.environ)
    for name, value in (spec.get("restore_env") or {}).items():     # set for this launcher alone
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        print(f"{argv[0]}: command not found", file=sys.stderr, flush=True)
        return 127
    except OSError as exc:
        print(f"{argv[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        return 126
    return 126


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "exec":
        sys.exit("usage: tes_launcher.py exec SPEC_JSON")
    sys.exit(launch(json.loads(sys.argv[2])))
