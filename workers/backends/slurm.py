"""Slurm backend: jobs go to a Slurm cluster through slurmrestd (workers/backends/slurm_rest.py) and are followed
by the self-rescheduling poll, like Pulsar, HTCondor and Batch.

Settings (BACKENDS["slurm"]):
    url               slurmrestd's base URL, e.g. http://127.0.0.1:6820 (required)
    api_version       the REST API's version in the paths (default "v0.0.38", Slurm 22.05)
    user              the Slurm user jobs are submitted and run as (required; never root)
    jwt_key           the cluster's HS256 key file (AuthAltParameters=jwt_key=...): tokens for `user` are made
                      from it; or
    token             a token given as is (e.g. from `scontrol token lifespan=...`), renewed by the operator
    token_lifetime    seconds a made token lives (default 1800)
    partition, account, qos, constraints, reservation
                      what every job gets (unset: the cluster's defaults)
    allow             what a job's backend_options may choose instead, by name: {"partition": ["debug", "long"],
                      "qos": ["normal"]}; a name not listed may not be set per job
    workdir           "shared" (default: the job directory is on a filesystem the nodes see at the same path; the
                      job runs in it) or "stage" (inputs are copied to a directory under `scratch`, which the
                      nodes and this worker see at the same path; the job runs there and its outputs are copied
                      back)
    scratch           the cluster scratch directory of the "stage" mode
    workdir_owner     "uid:gid" the job's directory is given to before submit (default: `user`'s ids on this
                      host, when it has that account): the job writes its outputs as `user`
    environment       extra environment variables of every job
    container         the nodes' container runtime, for jobs that run an image (an app's, a TES executor's):
                      {runtime: /usr/bin/podman, storage: ..., ...} (workers/backends/slurm_container.py); without
                      it a job asking for an image is refused (a 400 at submission)
    time_limit_margin seconds added to a job's time limit to make Slurm's (default 60): the runner stops the job
                      at its limit, Slurm's is a backstop (Slurm counts whole minutes)
    connect_timeout, read_timeout  seconds (default 5, 60)

The job script is generated: one `exec` of the app's argv, each argument quoted for sh (shlex.quote), so nothing a
user gives is read by a shell (a TES task of several executors: their podman runs in order, slurm_tes.py).
Executables run in place: a relative argv[0] resolves on this host, the venv's scripts first, and the nodes must see
the same path (a shared software area). The handle is Slurm's job id.
"""
from __future__ import annotations

import logging
import math
import os
import pwd
import secrets
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from caesar_rest.errors import BackendRejected

from .base import (
    LOST,
    BackendBase,
    BackendError,
    BackendNotConfigured,
    BackendStatus,
    BackendUnavailable,
    JobSpec,
    host_executable,
)
from .slurm_container import JOB_MOUNT, SlurmPodman, give_tree, refusal
from .slurm_rest import SlurmRest, Token
from .slurm_script import check_env, job_script
from .slurm_stage import copy_back, give_to
from .slurm_states import ACTIVE, CANCEL_MARK, WAITING, job_status
from .slurm_tes import TES_META, tes_batch_script

__all__ = ["CANCEL_MARK", "SlurmBackend", "job_script", "job_status"]

WORKDIR_MODES = ("shared", "stage")
CHOOSABLE = ("partition", "account", "qos", "constraints", "reservation")
# Seconds the controller's clock (a job's submit_time, whole seconds) may be behind the worker's when a job made
# since an attempt began is told from an earlier attempt's.
CLOCK_SLACK = 2
log = logging.getLogger("caesar.backends.slurm")


class SlurmBackend(BackendBase):
    name: ClassVar[str] = "slurm"
    blocking: ClassVar[bool] = False
    job_options: ClassVar[tuple[str, ...]] = CHOOSABLE
    tes_batch: ClassVar[bool] = True        # a TES task of several executors is one job (slurm_tes)

    @staticmethod
    def check_job_options(backend_settings: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
        allow = backend_settings.get("allow") or {}
        for name in CHOOSABLE:
            if name not in options:
                continue
            value = options[name]
            if not isinstance(value, str) or not value:
                return f"backend option {name!r} must be a non-empty string"
            allowed = allow.get(name) if isinstance(allow, Mapping) else None
            if not allowed:
                return f"backend option {name!r} may not be chosen per job on this service (it is set for all)"
            if value not in allowed:
                return f"backend option {name!r} may be one of {sorted(map(str, allowed))}, not {value!r}"
        return None

    def __init__(self, settings: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.options = options
        self.settings = settings
        url, user = options.get("url"), str(options.get("user") or "")
        if not url or not user:
            raise BackendNotConfigured("BACKENDS.slurm needs 'url' (slurmrestd) and 'user' (the Slurm user jobs "
                                       "run as)")
        if user == "root" or _uid_of(user) == 0:
            raise BackendNotConfigured("BACKENDS.slurm.user may not be root: jobs must not run as root")
        self.mode = str(options.get("workdir", "shared"))
        if self.mode not in WORKDIR_MODES:
            raise BackendNotConfigured(f"BACKENDS.slurm.workdir must be one of {WORKDIR_MODES}, not {self.mode!r}")
        self.scratch = Path(str(options["scratch"])) if options.get("scratch") else None
        if self.mode == "stage" and (self.scratch is None or not self.scratch.is_absolute()):
            raise BackendNotConfigured("BACKENDS.slurm.workdir 'stage' needs 'scratch', an absolute directory")
        self.defaults = {name: str(options[name]) for name in CHOOSABLE if options.get(name)}
        self.environment = {str(k): str(v) for k, v in (options.get("environment") or {}).items()}
        self.margin = float(options.get("time_limit_margin", 60))
        self.owner = _owner(options.get("workdir_owner"), user)
        ids = self.owner or _ids_of(user)
        self.podman = SlurmPodman(settings, options["container"], *(ids or (None, None))) \
            if options.get("container") else None
        token = Token(user, options.get("jwt_key"), options.get("token"), float(options.get("token_lifetime", 1800)))
        self.rest = SlurmRest(str(url), token, str(options.get("api_version") or "v0.0.38"),
                              float(options.get("connect_timeout", 5)), float(options.get("read_timeout", 60)))

    @classmethod
    def check_image(cls, settings: Mapping[str, Any], backend_settings: Mapping[str, Any], image: str) -> str | None:
        return refusal(settings, backend_settings, image)

    @classmethod
    def runs_tes(cls, backend_settings: Mapping[str, Any]) -> bool:
        """With a container runtime and the shared working directory: the task's directories are the job's."""
        return bool((backend_settings.get("container") or {}).get("runtime")) and \
            backend_settings.get("workdir", "shared") == "shared"

    # ---- the protocol -----------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """slurmrestd answers, its controller is UP, and so is the partition jobs go to by default."""
        pings = self.rest.ping()
        if not pings or any(p.get("ping") != "UP" for p in pings):
            raise BackendError(f"Slurm's controller is not UP: {pings}")
        detail: dict[str, Any] = {"url": self.rest.url, "api_version": self.rest.version,
                                  "controller": pings[0].get("hostname"), "workdir": self.mode}
        name = self.defaults.get("partition")
        if name:
            partition = self.rest.partition(name)
            if partition is None:
                raise BackendError(f"Slurm has no partition {name!r}")
            if partition.get("state") != "UP":
                raise BackendError(f"Slurm partition {name!r} is {partition.get('state')}")
            detail.update(partition=name, partition_state=partition.get("state"),
                          partition_nodes=partition.get("total_nodes"))
        return detail

    def submit(self, job: JobSpec) -> str:
        if not job.argv:
            raise BackendError("the job has an empty command")
        problem = self.check_job_options(self.options, {k: v for k, v in job.options.items() if k in CHOOSABLE})
        if problem:
            raise BackendRejected(problem)
        if job.image and self.podman is None:
            raise BackendRejected(f"App {job.app!r}: {refusal(self.settings, self.options, job.image)}")
        if job.options.get("tes") is not None and not self.runs_tes(self.options):
            raise BackendRejected("TES executors run on a Slurm backend with a container runtime and the shared "
                                  "working directory")
        # Resolved once: the script and the job's PATH use it. An image's command is the image's to find.
        executable = self.podman.runtime if self.podman and job.image else self._executable(job.argv[0])
        if self._tried_before(job):
            # An earlier attempt's job may still run, made with its reply lost: that attempt has ended, so its job is
            # cancelled (it runs in a directory set aside, or with inputs of its own), never left running beside this.
            self.adopt(job.job_id, Path(job.workdir), since=math.inf)
        rundir = self._rundir(job)
        try:
            script = self._script(job, rundir, executable)
            description = self._description(job, rundir, executable)
            posted = time.time()
            try:
                submitted = self.rest.submit(script, description)
            except BackendUnavailable as exc:
                # The reply may be lost after slurmrestd accepted it (a dropped connection, a read timeout).
                adopted = self._after_lost_reply(job, posted, exc)
                log.warning("job %s: the reply to its submission was lost (%s); adopted Slurm job %s", job.job_id,
                            exc, adopted)
                return adopted
            if submitted.messages:
                # Made, but Slurm says it cannot run as asked (more CPUs than any node has): it would wait forever.
                self.rest.cancel(submitted.job_id)
                raise BackendRejected("Slurm refused the job: " + "; ".join(map(str, submitted.messages)))
        except BackendError:
            if rundir != Path(job.workdir):
                shutil.rmtree(rundir, ignore_errors=True)
            raise
        # stage: the scratch directory is in the handle, so that any worker fetches from and cleans the right one.
        return str(submitted.job_id) if rundir == Path(job.workdir) else f"{submitted.job_id}|{rundir}"

    def poll(self, handle: str) -> BackendStatus:
        slurm_id, _ = self._split(handle)
        record = self.rest.job(slurm_id)
        if record is None:
            return BackendStatus(LOST, reason=f"Slurm no longer knows job {slurm_id} (it ended longer ago than the "
                                              "controller keeps jobs, MinJobAge, or the controller lost its state)")
        return job_status(record)

    def cancel(self, handle: str) -> None:
        slurm_id, _ = self._split(handle)
        record = self.rest.job(slurm_id)
        if record is None:
            return
        comment = str(record.get("comment") or "")
        if not comment.endswith(CANCEL_MARK):
            # Marked first: whichever worker polls the job next tells our cancel from someone else's.
            self.rest.update(slurm_id, {"comment": comment + CANCEL_MARK})
        if self.podman is not None and record.get("job_state") == "RUNNING":
            # SIGTERM first, so that the job script removes its container: a cancel's SIGKILL reaches podman and
            # conmon at once, and podman run's --rm never runs. Then the job, if it outlives stop_grace.
            self.rest.cancel(slurm_id, signal="SIGTERM")
            deadline = time.monotonic() + self.podman.stop_grace
            while time.monotonic() < deadline:
                record = self.rest.job(slurm_id)
                if record is None or record.get("job_state") != "RUNNING":
                    return
                time.sleep(0.2)
        self.rest.cancel(slurm_id)

    def fetch_outputs(self, handle: str, dest: Path) -> None:
        """shared: the outputs are in the job directory already. stage: copied back from the scratch directory, each
        file checked against the size and sha256 the job script measured on the node (slurm_stage)."""
        if self.mode != "stage":
            return
        _, rundir = self._split(handle)
        if rundir is not None and rundir.is_dir():
            copy_back(rundir, Path(dest))

    def cleanup(self, handle: str) -> None:
        """stage: the scratch directory goes. Slurm keeps no more than its record of the job."""
        _, rundir = self._split(handle)
        if rundir is not None and rundir.is_dir():
            shutil.rmtree(rundir)

    def adopt(self, job_id: str, workdir: Path, since: float) -> str | None:
        """The Slurm job this backend made for job_id since `since` whose id was never recorded, found by its comment
        in the controller's job listing (ended or not). Any other copy still waiting or running is cancelled: one of
        an earlier attempt, a second one, or one this backend cannot follow (its directory neither the job's nor a
        scratch directory of this backend). Never two copies of a job."""
        mine = f"caesar-rest job {job_id}"
        found: str | None = None
        for record in sorted(self.rest.jobs(), key=lambda r: int(r.get("job_id") or 0)):
            if str(record.get("comment") or "") not in (mine, mine + CANCEL_MARK):
                continue
            state, submitted = str(record.get("job_state") or ""), record.get("submit_time")
            live = state in WAITING or state in ACTIVE
            handle = self._handle_of(record, job_id, workdir)
            if found is None and handle is not None and isinstance(submitted, int) \
                    and submitted >= since - CLOCK_SLACK:
                found = handle
            elif live:
                log.warning("job %s: cancelling Slurm job %s, a copy this backend does not follow", job_id,
                            record.get("job_id"))
                self.rest.cancel(int(record["job_id"]))
        return found

    # ---- helpers ------------------------------------------------------------------------------------------------
    def _after_lost_reply(self, job: JobSpec, posted: float, exc: BackendUnavailable) -> str:
        """The job slurmrestd made of a submission whose reply never came, or BackendUnavailable again when it made
        none (or the listing cannot be read: then the next try, or the reaper's, adopts or cancels it)."""
        try:
            adopted = self.adopt(job.job_id, Path(job.workdir), since=posted)
        except BackendError as again:
            raise BackendUnavailable(f"{exc}; whether Slurm made the job is unknown (listing its jobs failed: "
                                     f"{again}); a later try adopts or cancels it") from exc
        if adopted is None:
            raise exc
        return adopted

    def _tried_before(self, job: JobSpec) -> bool:
        """An earlier submit of this job got as far as its directory: its tmp/, an earlier attempt's directory set
        aside (workers/retry.py), or a scratch directory of it. Only then is the controller's listing read."""
        workdir = Path(job.workdir)
        if (workdir / "tmp").exists() or any(workdir.parent.glob(f"{workdir.name}.attempt-*")):
            return True
        return self.scratch is not None and any(self.scratch.glob(f"caesar-{job.job_id}-*"))

    def _handle_of(self, record: Mapping[str, Any], job_id: str, workdir: Path) -> str | None:
        """The handle of a Slurm job record, when it runs where this backend would run job_id."""
        cwd = Path(str(record.get("current_working_directory") or ""))
        if self.mode != "stage":
            return str(record["job_id"]) if cwd == workdir else None
        if self.scratch is None or cwd.parent != self.scratch or not cwd.name.startswith(f"caesar-{job_id}-"):
            return None
        return f"{record['job_id']}|{cwd}"

    def _script(self, job: JobSpec, rundir: Path, executable: str) -> str:
        """The app's argv in place, or the podman run of its image (the app's environment inside with -e)."""
        if not (self.podman and job.image):
            return job_script([executable, *map(str, job.argv[1:])], manifest=self.mode == "stage")
        tes = job.options.get("tes")
        inside = {"HOME": "/tmp", "TMPDIR": "/tmp" if tes else f"{JOB_MOUNT}/tmp", "LANG": "C.UTF-8",
                  **({} if tes else {"MPLBACKEND": "Agg", "OMP_NUM_THREADS": str(max(1, int(job.cpus)))}),
                  **self.environment, **job.env, "CAESAR_JOB_ID": job.job_id}
        check_env(inside)
        if tes and tes.get("executors") is not None:      # the whole task: its executors in order (slurm_tes)
            return tes_batch_script(self.podman, job, rundir, inside)
        return job_script(self.podman.argv(job, rundir, inside), manifest=self.mode == "stage",
                          prologue=self.podman.prologue(), on_term=self.podman.remove(job, rundir))

    def _description(self, job: JobSpec, rundir: Path, executable: str) -> dict[str, Any]:
        tes = job.options.get("tes") or {}
        if self.podman and job.image:       # podman's own environment: the app's is inside the container
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **self.podman.environment(rundir),
                   "CAESAR_JOB_ID": job.job_id}
        else:
            env = {"PATH": f"{os.path.dirname(executable)}:/usr/local/bin:/usr/bin:/bin",
                   "HOME": str(rundir / "tmp"), "TMPDIR": str(rundir / "tmp"), "LANG": "C.UTF-8",
                   "MPLBACKEND": "Agg", "OMP_NUM_THREADS": str(max(1, int(job.cpus))), **self.environment,
                   **job.env, "CAESAR_JOB_ID": job.job_id}
        check_env(env)
        description: dict[str, Any] = {
            "name": f"caesar-{job.app}-{job.job_id}",
            "comment": f"caesar-rest job {job.job_id}",
            "current_working_directory": str(rundir),
            # Relative to the working directory: Slurm expands %-patterns in these names, never in the directory.
            "standard_output": "stdout.log",
            "standard_error": "stderr.log",
            # A TES executor's stdin is opened by Slurm, as the job's user; its executors share the task's logs.
            "standard_input": str(tes.get("stdin") or "/dev/null"),
            **({"open_mode": "append"} if tes else {}),
            "environment": env,
            "cpus_per_task": max(1, math.ceil(job.cpus or 1)),
            "tasks": 1,
            "requeue": False,       # a node failure ends the job; retrying is the service's decision
            **self.defaults,
            **{k: str(v) for k, v in job.options.items() if k in CHOOSABLE and v},
        }
        if job.memory_mb:
            description["memory_per_node"] = int(job.memory_mb)
        if job.time_limit_s:
            description["time_limit"] = max(1, math.ceil((float(job.time_limit_s) + self.margin) / 60))
        return description

    def _rundir(self, job: JobSpec) -> Path:
        """Where the job runs, made ready for the job's account: the job directory, or its copy in scratch."""
        workdir = Path(job.workdir)
        if self.mode == "stage":
            assert self.scratch is not None
            rundir = self.scratch / f"caesar-{job.job_id}-{secrets.token_hex(4)}"
            rundir.mkdir(parents=True)
            for item in job.inputs:
                target = rundir / item.relpath
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(workdir / item.relpath, target)
        else:
            rundir = workdir
        (rundir / "tmp").mkdir(parents=True, exist_ok=True)
        if self.owner is not None:
            give_to(rundir, *self.owner)
            if job.options.get("tes") is not None:
                for tree in ("fs", TES_META):     # the task's directories, written by its executors; their records
                    give_tree(rundir / tree, *self.owner)
        return rundir

    def _split(self, handle: str) -> tuple[int, Path | None]:
        """The Slurm job id, and the scratch directory of a staged job (only ever one directly in `scratch`)."""
        job, sep, rest = handle.partition("|")
        if not job.isdigit() or (sep and not rest):
            raise BackendError(f"Not a Slurm job handle: {handle!r}")
        if not sep:
            return int(job), None
        rundir = Path(rest)
        if self.scratch is None or rundir.parent != self.scratch or not rundir.name.startswith("caesar-"):
            raise BackendError(f"Slurm job handle {handle!r} names no scratch directory of this backend")
        return int(job), rundir

    @staticmethod
    def _executable(command: str) -> str:
        found = host_executable(command)
        if found is None:
            raise BackendRejected(f"Command {command!r} not found on the worker host; Slurm runs executables in "
                                  "place, so it must exist at the same path on the nodes")
        return found


def _uid_of(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _ids_of(user: str) -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _owner(setting: Any, user: str) -> tuple[int, int] | None:
    if setting:
        uid, _, gid = str(setting).partition(":")
        return int(uid), int(gid or uid)
    if os.geteuid() != 0:
        return None         # the job's account is this worker's, or the operator gave the directories to it
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid
