"""Images on Slurm: a job whose app (or TES executor) names an image runs it with the container runtime of the
nodes (podman, rootless, as the Slurm job's user), with the container backend's hardening spelt as podman options
(container_security.Hardening.podman_args: one definition for both backends).

Settings (BACKENDS[<slurm backend>]["container"]):
    runtime         podman's path on the nodes (required: naming it is what lets the backend run images)
    storage         podman's --root: the job user's image store on the nodes, where the operator puts the images
                    (default: podman's own for that user, under its HOME: the job's tmp/, empty)
    storage_driver  podman's --storage-driver (default: podman's choice)
    runroot         podman's --runroot and XDG_RUNTIME_DIR, node-local (default /tmp/caesar-podman-<uid>)
    conf            a containers.conf for the runtime (CONTAINERS_CONF)
    init            a tiny init as PID 1 that forwards signals (default true)
    stop_grace      seconds a cancelled job has between SIGTERM (its script then removes its container) and
                    Slurm's cancel (default 10)
    pids_limit, tmpfs_size, network, app_network   as for the container backend
The container runs as the Slurm job's own uid and gid (--userns=keep-id: the files it writes are the job user's,
never root's), the job's directory at /job (inputs read-only), or a TES executor's directories at their paths.
"""
from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caesar_rest import images

from .base import BackendError, BackendNotConfigured, JobSpec
from .container_security import Hardening, checked_image

JOB_MOUNT = "/job"
PULL = {"never": "never", "if-missing": "missing", "always": "always", None: "missing"}  # None: a TES executor


class SlurmPodman:
    """The podman command line of a Slurm job that runs an image."""

    def __init__(self, settings: Mapping[str, Any], options: Mapping[str, Any], uid: int | None,
                 gid: int | None) -> None:
        self.settings = settings
        self.runtime = str(options.get("runtime") or "")
        if not self.runtime.startswith("/"):
            raise BackendNotConfigured(f"BACKENDS.slurm.container.runtime must be the runtime's absolute path on the "
                                       f"nodes, not {self.runtime!r}")
        if uid is None or gid is None:
            raise BackendNotConfigured("BACKENDS.slurm.container needs the Slurm user's uid and gid: give "
                                       "workdir_owner, or the user an account on the worker host")
        self.uid, self.gid = uid, gid
        self.storage = options.get("storage")
        self.driver = options.get("storage_driver")
        self.runroot = str(options.get("runroot") or f"/tmp/caesar-podman-{uid}")
        self.conf = options.get("conf")
        self.init = bool(options.get("init", True))
        self.stop_grace = float(options.get("stop_grace", 10))
        self.hardening = Hardening.from_options(options)

    def environment(self, rundir: Path) -> dict[str, str]:
        """podman's own environment in the Slurm job (the app's goes into the container with -e)."""
        env = {"HOME": str(rundir / "tmp"), "XDG_RUNTIME_DIR": self.runroot}
        if self.conf:
            env["CONTAINERS_CONF"] = str(self.conf)
        return env

    def name(self, job: JobSpec, rundir: Path) -> str:
        tes = job.options.get("tes")
        return f"caesar-{job.job_id}-{rundir.name[-8:] if tes is None else tes['index']}"

    def remove(self, job: JobSpec, rundir: Path) -> list[str]:
        """The container removed (a cancel's SIGTERM reaches podman, conmon and the app at once: podman run's own
        --rm may never run)."""
        return [*self._podman(), "rm", "--force", "--time=0", "--ignore", self.name(job, rundir)]

    def _podman(self) -> list[str]:
        top = [self.runtime]
        if self.storage:
            top += ["--root", str(self.storage)]
        if self.driver:
            top += ["--storage-driver", str(self.driver)]
        # Errors only: podman's warnings (rootless limits ignored on cgroup v1) would be the app's stderr lines.
        return [*top, "--runroot", self.runroot, "--log-level=error"]

    def prologue(self) -> list[str]:
        """Lines of the job script before podman: its runtime directory, the user's own (0700)."""
        return [f"mkdir -p -m 700 {shlex.quote(self.runroot)}"]

    def argv(self, job: JobSpec, rundir: Path, app_env: Mapping[str, str]) -> list[str]:
        """podman run of the job's image with the job's argv. An app job: rundir at /job (its working directory),
        inputs read-only. A TES executor (JobSpec.options["tes"]): the task's directories at their paths, its
        working directory, its stdin (the Slurm job's standard input, see SlurmBackend)."""
        if not job.image:
            raise BackendError("the job names no image")
        image = checked_image(self.settings, job.image)
        policy = job.options.get("image_pull")
        if policy not in PULL:
            raise BackendError(f"image_pull {policy!r} is not one of never, if-missing, always")
        tes = job.options.get("tes")
        args = [*self._podman(), "run", "--rm", f"--pull={PULL[policy]}", f"--name={self.name(job, rundir)}",
                f"--label=caesar.job_id={job.job_id}", "--userns=keep-id", f"--user={self.uid}:{self.gid}",
                *self.hardening.podman_args(job.options, job.cpus, job.memory_mb),
                # The pids limit again as RLIMIT_NPROC, counted in the container's own user namespace (Linux 5.14+):
                # rootless Podman cannot set --pids-limit on a cgroup v1 node, and a fork bomb must stop all the same.
                f"--ulimit=nproc={self.hardening.pids_limit}:{self.hardening.pids_limit}"]
        if self.init:
            args.append("--init")
        if tes is None:
            args += ["-v", f"{rundir}:{JOB_MOUNT}:rw", "-w", JOB_MOUNT]
            if (rundir / "inputs").is_dir():
                args += ["-v", f"{rundir / 'inputs'}:{JOB_MOUNT}/inputs:ro"]
        else:
            for target, source in tes["mounts"].items():
                args += ["-v", f"{source}:{target}:rw"]
            if tes.get("workdir"):
                args += ["-w", str(tes["workdir"])]
            if tes.get("stdin"):
                args.append("--interactive")
        for name, value in app_env.items():
            args += ["-e", f"{name}={value}"]
        return [*args, f"--entrypoint={json.dumps(job.argv[:1])}", image, *job.argv[1:]]


def refusal(settings: Mapping[str, Any], backend_settings: Mapping[str, Any], image: str) -> str | None:
    """Why a Slurm backend so configured cannot run a job asking for image: it names no runtime, or
    ALLOWED_IMAGES does not allow the image."""
    if not (backend_settings.get("container") or {}).get("runtime"):
        return (f"it asks for the container image {image}, and this Slurm backend runs no images: its settings name "
                "no container runtime of the nodes (container: {runtime: /usr/bin/podman, ...}); choose another "
                "backend")
    return images.refusal(settings, image)


def give_tree(root: Path, uid: int, gid: int) -> None:
    """A TES task's directories and files to the Slurm job's user, its executor writing there as that user; links
    are not followed (lchown), so nothing outside the tree changes hands."""
    if not root.is_dir():
        return
    for top, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(top, name), uid, gid)
    os.chown(root, uid, gid)
