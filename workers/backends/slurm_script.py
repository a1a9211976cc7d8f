"""The batch script of a Slurm job: the app's argv (or podman's) with every argument quoted for sh, so that nothing a
user gives is read by a shell; in the stage mode followed by its outputs' manifest (slurm_stage)."""
from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from caesar_rest.errors import BackendRejected

from .slurm_stage import STATUS_LINES, manifest_lines

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def job_script(argv: list[str], manifest: bool = False, prologue: list[str] | None = None,
               on_term: list[str] | None = None) -> str:
    """The batch script: argv exec'ed, every argument quoted for sh. A NUL cannot be in an argument of any exec.
    manifest (the stage mode): argv run, then the size and sha256 of its outputs written beside them
    (slurm_stage.manifest_lines), and argv's status kept. prologue: lines of ours run first. on_term: a command
    (argv) run once argv has ended when Slurm sends SIGTERM (a cancel, before its SIGKILL: KillWait)."""
    for arg in [*argv, *(on_term or [])]:
        if "\0" in arg:
            raise BackendRejected(f"an argument contains a NUL byte: {arg!r}")
    command = " ".join(shlex.quote(arg) for arg in argv)
    lines = ["#!/bin/sh", "# caesar-rest: the app's argv, each argument quoted" +
             ("; then its outputs' manifest" if manifest else ""), *(prologue or [])]
    if on_term:
        lines.append(f"trap {shlex.quote(' '.join(map(shlex.quote, on_term)) + ' >/dev/null 2>&1')} TERM")
    if manifest:
        lines += [command, *manifest_lines()]
    elif on_term:
        lines += [command, "rc=$?", *STATUS_LINES]
    else:
        lines.append(f"exec {command}")
    return "\n".join(lines) + "\n"


def check_env(env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not _ENV_NAME.match(name) or "\0" in value:
            raise BackendRejected(f"environment variable {name!r} cannot be passed to Slurm")
