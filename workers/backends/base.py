"""The Backend protocol and its data, re-exported from caesar_rest.backends (where the API imports them without
importing the workers) for the worker modules that still import them from here; and host_executable, shared by the
backends whose nodes run executables in place."""
from __future__ import annotations

import os
import shutil
import sys

from caesar_rest.backends import (
    CANCELLED,
    EXITED,
    FAILED,
    LOST,
    QUEUED,
    RUNNING,
    Backend,
    BackendBase,
    BackendError,
    BackendNotConfigured,
    BackendStatus,
    BackendUnavailable,
    InputFile,
    JobSpec,
    poll_in_slot,
    translate_errors,
)


def host_executable(command: str) -> str | None:
    """argv[0] as an absolute path, for backends that run executables in place on their nodes (HTCondor, Slurm):
    a relative name resolves on this host, the venv's scripts first; None when it is found nowhere."""
    if os.path.isabs(command):
        return command
    path = f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"
    found = shutil.which(command, path=path)
    return os.path.abspath(found) if found is not None else None


__all__ = ["CANCELLED", "EXITED", "FAILED", "LOST", "QUEUED", "RUNNING", "Backend", "BackendBase", "BackendError",
           "BackendNotConfigured", "BackendStatus", "BackendUnavailable", "InputFile", "JobSpec", "host_executable",
           "poll_in_slot",
           "translate_errors"]
