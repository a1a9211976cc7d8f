"""A GA4GH TES task of several executors as one Slurm job (issue 16), as Funnel's batch backends run a task: the
generated script runs each executor in order, each its own podman run (SlurmPodman.argv: the same hardening as
one executor's job) with its own image, stdin, stdout, stderr, workdir and environment. Every argument is quoted
for sh (shlex.quote): nothing a user gives is read by a shell.

For executor i the script writes, in the task's meta directory (TES_META, <job dir>/.tes, the worker's to read):
executor-i.start and executor-i.end (`date -u +%s.%N`), executor-i.exit (its status), and executor-i.stdout /
executor-i.stderr when the task names no file for that stream. A stream file the task names is checked first
(realpath: it must stay under the task's directories, fs/; an earlier executor may have left a link there); when
it leaves them, executor-i.status says why and the executor's status is 125 (workers/tes_launcher.SETUP_FAILED)
and the script stops. It stops at the first non-zero status unless that executor has ignore_error, and exits with
that status (0 when every executor that counts succeeded). A cancel's SIGTERM removes the running container and
ends the script: no later executor starts. Each podman run waits in the background (`& wait`), so that the trap
runs at once rather than when podman ends.
"""
from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

from .base import JobSpec
from .slurm_container import SlurmPodman
from .slurm_script import check_env

TES_META = ".tes"
SETUP_FAILED = 125         # as workers/tes_launcher.SETUP_FAILED (the worker reads it so)


def meta_file(rundir: Path, i: int, what: str) -> Path:
    return rundir / TES_META / f"executor-{i}.{what}"


def tes_batch_script(podman: SlurmPodman, job: JobSpec, rundir: Path, env: dict[str, str]) -> str:
    """The script of job, whose options["tes"]["executors"] lists the task's executors ({argv, image, env,
    workdir, stdin, stdout, stderr (host paths), paths (those streams as the task names them), ignore_error});
    env: what every container gets before its own (job.env is no executor's: each has its own)."""
    tes = job.options["tes"]
    q = shlex.quote
    fs = q(str(tes["fs"]))
    specs = [_executor_job(job, i, ex) for i, ex in enumerate(tes["executors"])]
    for spec in specs:
        check_env(spec.env)
    names = [podman.name(spec, rundir) for spec in specs]
    remove = podman.remove(specs[0], rundir)[:-1] + names
    lines = ["#!/bin/sh", "# caesar-rest: a TES task's executors in order, each argument quoted",
             *podman.prologue(), f"mkdir -p {q(str(rundir / TES_META))}",
             f"fs=$(realpath -- {fs}) || exit {SETUP_FAILED}",
             'inside() { case "$(realpath -m -- "$1")" in "$fs"/*) return 0;; esac; return 1; }',
             f"trap {q(' '.join(map(q, remove)) + ' >/dev/null 2>&1; exit 143')} TERM"]
    for i, (ex, spec) in enumerate(zip(tes["executors"], specs, strict=True)):
        files = {what: q(str(meta_file(rundir, i, what))) for what in ("start", "end", "exit", "status")}
        streams = {"stdout": q(str(ex["stdout"] or meta_file(rundir, i, "stdout"))),
                   "stderr": q(str(ex["stderr"] or meta_file(rundir, i, "stderr"))),
                   "stdin": q(str(ex["stdin"] or "/dev/null"))}
        lines.append(f"# executor {i}")
        lines.append(f"date -u +%s.%N > {files['start']}")
        for key in ("stdin", "stdout", "stderr"):
            if ex[key]:
                shown = (ex.get("paths") or {}).get(key) or ex[key]
                why = q(f"executor {i}'s {key} {shown} leads outside the task's directories")
                lines.append(f"if ! inside {streams[key]}; then printf '%s\\n' {why} > {files['status']}; "
                             f"printf '{SETUP_FAILED}\\n' > {files['exit']}; date -u +%s.%N > {files['end']}; "
                             f"exit {SETUP_FAILED}; fi")
        command = " ".join(q(arg) for arg in podman.argv(spec, rundir, {**env, **spec.env}))
        lines += [f"{command} < {streams['stdin']} > {streams['stdout']} 2> {streams['stderr']} &",
                  "wait $!", "rc=$?",
                  f"date -u +%s.%N > {files['end']}", f"printf '%s\\n' \"$rc\" > {files['exit']}"]
        if not ex.get("ignore_error"):
            lines.append('if [ "$rc" -ne 0 ]; then exit "$rc"; fi')
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def _executor_job(job: JobSpec, i: int, ex: dict[str, Any]) -> JobSpec:
    """Executor i as the JobSpec SlurmPodman.argv makes a podman run of (its stdin opened by the script)."""
    tes = job.options["tes"]
    return dataclasses.replace(job, argv=list(ex["argv"]), image=ex["image"], env=dict(ex.get("env") or {}),
                               options={**job.options, "tes": {"index": i, "mounts": tes["mounts"],
                                                               "workdir": ex.get("workdir"),
                                                               "stdin": ex.get("stdin")}})
