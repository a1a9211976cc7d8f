"""Container backend: argv in a Docker or Podman container (Docker Engine API), the job directory mounted at /job."""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from .base import (
    EXITED,
    LOST,
    QUEUED,
    RUNNING,
    BackendBase,
    BackendError,
    BackendNotConfigured,
    BackendStatus,
    BackendUnavailable,
    JobSpec,
)
from .container_security import (
    Hardening,
    check_user,
    checked_image,
    input_groups,
    refuse_job_options,
    resource_limits,
)

try:
    import docker
    import docker.errors
except ImportError as exc:  # the `container` extra
    raise ImportError(f"the container backend needs the docker SDK: pip install 'caesar-rest[container]' "
                      f"({exc})") from exc

# These need the docker SDK checked above.
from .container_engine import PULL_POLICIES, engine_errors, ensure_image, explain, kernel_oom_killed, root_cause
from .container_streams import LogPump, feed_stdin

JOB_MOUNT = "/job"                      # the job directory inside the container (working directory)
JOB_LABEL = "caesar.job_id"             # every container we create carries it: leak checks and orphan hunts
STREAMS = (("stdout", "stdout.log"), ("stderr", "stderr.log"))
DEFAULT_UID = 1000                      # the `caesar` user of localhost/caesar-apps
RUNNING_STATES = {"running", "paused", "restarting", "stopping", "removing"}
QUEUED_STATES = {"created", "configured", "initialized"}


log = logging.getLogger("caesar.backends.container")


def default_base_url() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


class ContainerBackend(BackendBase):
    """One container per job, created and removed by this worker; the worker's slot is held while it runs.

    Settings (BACKENDS["container"]): base_url (engine endpoint, default $DOCKER_HOST or the Docker socket),
    api_version ("1.41", Podman's level; "auto" asks the engine), timeout (s per API call), user (container
    user, default 1000 with the job directory's group when the worker is root, else the worker's own ids; an
    app's YAML may set backend_options.container.user, a job's request never), image_pull (policy when the job
    gives none), default_image (for jobs that name none), network (network mode of every job, default "none"),
    app_network (mode for apps that declare `network: true`, default "bridge"), pids_limit (default 1024),
    tmpfs_size (of the tmpfs /tmp, default "1g"), init (a tiny init as PID 1 that forwards signals, default
    true), stop_grace (s between SIGTERM and SIGKILL on cancel).
    Every container runs with all capabilities dropped, no-new-privileges and a read-only root filesystem
    (container_security.Hardening); images must match ALLOWED_IMAGES when it is set.
    """

    name: ClassVar[str] = "container"
    blocking: ClassVar[bool] = True
    runs_images: ClassVar[bool] = True      # ALLOWED_IMAGES applies to its jobs (caesar_rest.images)
    job_options: ClassVar[tuple[str, ...]] = ("user",)

    def __init__(self, settings: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.base_url = str(options.get("base_url") or default_base_url())
        self.api_version = str(options.get("api_version") or "1.41")
        self.timeout = float(options.get("timeout", 60))
        self.user = options.get("user")
        self.image_pull = options.get("image_pull") or "if-missing"
        self.default_image = options.get("default_image")
        self.settings = settings
        self.hardening = Hardening.from_options(options)
        self.init = bool(options.get("init", True))
        self.stop_grace = float(options.get("stop_grace", min(float(settings.get("CANCEL_GRACE", 1.0)), 1.0)))
        problem = check_user(self.user)
        if problem or self.image_pull not in PULL_POLICIES:
            problem = problem or f"image_pull must be one of {PULL_POLICIES}"
            raise BackendNotConfigured(f"BACKENDS['container']: {problem}")
        self.host = socket.gethostname()
        # Seconds a followed log stream may take to end after its container: then it is read whole instead.
        self.log_drain_timeout = float(options.get("log_drain_timeout", 10))
        self._api: docker.APIClient | None = None
        self._pumps: dict[str, dict[str, LogPump]] = {}

    @classmethod
    def runs_tes(cls, backend_settings: Mapping[str, Any]) -> bool:
        return True             # one container per executor, the task's directories mounted at their paths

    @staticmethod
    def check_job_options(backend_settings: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
        # "user" stays a known option so that asking for it is a 400 naming it, on both the app and TES paths.
        return refuse_job_options(options)

    # ---- engine access ------------------------------------------------------------------------------------
    @contextmanager
    def _engine(self, doing: str) -> Iterator[docker.APIClient]:
        """The API client; transport failures become BackendUnavailable naming the endpoint."""
        with engine_errors(self.base_url, doing):
            if self._api is None:
                self._api = docker.APIClient(base_url=self.base_url, version=self.api_version,
                                             timeout=self.timeout)  # type: ignore[arg-type]  # a float works; stubs say int
            yield self._api

    def health(self) -> dict[str, Any]:
        """The engine answers /_ping; its name and version from the answer's headers (GET /health). Not /version:
        Podman runs conmon and the OCI runtime to answer it, over a second on a busy host."""
        with self._engine("checking its health") as api:
            answer = api.get(f"{api.base_url}/_ping", timeout=self.timeout)
        if answer.status_code != 200:
            raise BackendUnavailable(f"the container engine at {self.base_url} answered /_ping with HTTP "
                                     f"{answer.status_code}: {answer.text[:200]}")
        return {"base_url": self.base_url, "engine": answer.headers.get("Server"),
                "api": answer.headers.get("Api-Version")}

    # ---- submit -------------------------------------------------------------------------------------------
    def submit(self, job: JobSpec) -> str:
        """Create and start the job's container. An app job gets its job directory at /job (the working
        directory) and its inputs read-only; a GA4GH TES executor (JobSpec.options["tes"]: index, mounts
        {container path: host path}, workdir, stdin) gets the task's directories at their own paths, its
        working directory, and its stdin file fed in while it runs."""
        image = job.image or self.default_image
        if not image:
            raise BackendError(f"app {job.app!r} names no container image and the container backend has no "
                               "default_image")
        if not job.argv:
            raise BackendError("empty command")
        image = checked_image(self.settings, image)
        policy = job.options.get("image_pull") or self.image_pull
        if policy not in PULL_POLICIES:
            raise BackendError(f"image_pull {policy!r} is not one of {PULL_POLICIES}")
        workdir = Path(job.workdir)
        user = self._container_user(job.options.get("user"), workdir)
        tes = job.options.get("tes")
        groups: list[str] = []
        binds: dict[str, Mapping[str, str]]
        working_dir: str | None
        stdin: str | None
        if tes is None:
            self._prepare_workdir(workdir, user)
            binds = {str(workdir): {"bind": JOB_MOUNT, "mode": "rw"}}
            if (workdir / "inputs").is_dir():
                binds[str(workdir / "inputs")] = {"bind": f"{JOB_MOUNT}/inputs", "mode": "ro"}
                groups = input_groups(workdir / "inputs", user)
            # HOME is the tmpfs /tmp (the root filesystem is read-only), never in the outputs; TMPDIR stays on the
            # job's disk for large scratch files, removed before the tarball is made.
            env = {"HOME": "/tmp", "TMPDIR": f"{JOB_MOUNT}/tmp", "LANG": "C.UTF-8", "MPLBACKEND": "Agg",
                   "OMP_NUM_THREADS": str(max(1, int(job.cpus))), **job.env, "CAESAR_JOB_ID": job.job_id}
            name, app, working_dir, stdin = f"caesar-{job.job_id}", job.app, JOB_MOUNT, None
        else:
            binds = {source: {"bind": target, "mode": "rw"} for target, source in tes["mounts"].items()}
            # The root filesystem is read-only: HOME is the tmpfs /tmp, scratch that leaves no trace in outputs.
            env = {"HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", **job.env, "CAESAR_JOB_ID": job.job_id}
            name, app, working_dir = f"caesar-{job.job_id}-{tes['index']}", "tes", tes.get("workdir") or None
            stdin = tes.get("stdin")
        with self._engine(f"starting job {job.job_id}") as api:
            ensure_image(api, self.base_url, image, policy)
            limits = resource_limits(job.cpus, job.memory_mb)
            host_config = api.create_host_config(binds=binds, init=self.init or None, group_add=groups or None,
                                                 **limits, **self.hardening.host_config(job.options))
            labels = {JOB_LABEL: job.job_id, "caesar.app": app, "caesar.owner": job.owner}
            create: dict[str, Any] = dict(
                image=image, entrypoint=job.argv[:1], command=job.argv[1:], working_dir=working_dir, user=user,
                environment=env, labels=labels, host_config=host_config, name=name, stdin_open=bool(stdin))
            try:
                container = api.create_container(**create)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise BackendError(f"the engine refused to create the container from {image}: "
                                       f"{explain(exc)}") from exc
                # A leftover of a worker that died with this job: the job is ours now, its container is not.
                self._remove(api, name)
                container = api.create_container(**create)
            handle = str(container["Id"])
            feed = api.attach_socket(handle, params={"stdin": 1, "stream": 1}) if stdin else None
            try:
                api.start(handle)
            except Exception as exc:
                # Nothing half-created stays behind: the runner never cleans up after a failed submit.
                why = explain(exc) if isinstance(exc, docker.errors.APIError) else root_cause(exc)
                message = f"container of image {image} did not start {job.argv[0]!r}: {why}"
                try:
                    self._remove(api, handle)
                except Exception as rm_exc:
                    raise BackendError(f"{message}; removing container {handle[:12]} failed too: {rm_exc}") from exc
                raise BackendError(message) from exc
        if feed is not None and stdin:
            feed_stdin(feed, Path(stdin), handle, job.job_id)
        if tes is None:
            # TES executors' streams are read whole at the end (fetch_outputs): the task keeps them per executor.
            self._pumps[handle] = {stream: LogPump(self.base_url, self.api_version, handle, stream,
                                                   workdir / filename) for stream, filename in STREAMS}
        return handle

    def _container_user(self, requested: str | None, workdir: Path) -> str:
        """uid:gid for the container. Group defaults to the job directory's, so inputs (0440) stay readable."""
        value = requested or self.user
        problem = check_user(value)
        if problem:
            raise BackendError(problem)
        if value is None:
            value = str(DEFAULT_UID) if os.geteuid() == 0 else f"{os.geteuid()}:{os.getegid()}"
        uid, _, gid = str(value).partition(":")
        uid = "0" if uid == "root" else uid
        return f"{uid}:{gid or workdir.stat().st_gid}"

    def _prepare_workdir(self, workdir: Path, user: str) -> None:
        """Let the container's user write the job directory (through its group) and give it a tmp/."""
        tmp = workdir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        if int(user.partition(":")[0]) != os.geteuid():
            for path in (workdir, tmp):
                mode = path.stat().st_mode
                if mode & 0o070 != 0o070:
                    os.chmod(path, mode | 0o070)

    # ---- follow, stop, collect ------------------------------------------------------------------------------
    def poll(self, handle: str) -> BackendStatus:
        with self._engine(f"polling container {handle[:12]}") as api:
            try:
                info = api.inspect_container(handle)
            except docker.errors.NotFound:
                return BackendStatus(LOST, reason=f"container {handle[:12]} no longer exists on {self.base_url}")
            except docker.errors.APIError as exc:
                raise BackendUnavailable(f"inspecting container {handle[:12]} failed: {explain(exc)}") from exc
        state = info.get("State") or {}
        status = str(state.get("Status") or "").lower()
        pid = int(state.get("Pid") or 0) or None
        if status in QUEUED_STATES:
            return BackendStatus(QUEUED, host=self.host)
        if status in RUNNING_STATES or state.get("Running"):
            return BackendStatus(RUNNING, pid=pid, host=self.host)
        exit_code = int(state.get("ExitCode") or 0)
        oom = bool(state.get("OOMKilled"))
        if not oom and exit_code == 137 and (info.get("HostConfig") or {}).get("Memory"):
            # Podman before 5.0 never sets OOMKilled; the kernel's own record of the kill names the cgroup.
            oom = kernel_oom_killed(str(info.get("Id") or handle))
        return BackendStatus(EXITED, exit_code=exit_code, reason=str(state.get("Error") or ""), host=self.host,
                             oom_killed=oom)

    def cancel(self, handle: str) -> None:
        """SIGTERM (forwarded by the container's init), SIGKILL after stop_grace; returns once it has stopped."""
        with self._engine(f"stopping container {handle[:12]}") as api:
            for signal_name, wait in (("SIGTERM", self.stop_grace), ("SIGKILL", 10.0)):
                if not self._running(api, handle):
                    return
                try:
                    api.kill(handle, signal=signal_name)
                except docker.errors.NotFound:
                    return
                except docker.errors.APIError as exc:
                    if self._running(api, handle):
                        raise BackendError(f"could not {signal_name} container {handle[:12]}: {explain(exc)}") from exc
                    return
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and self._running(api, handle):
                    time.sleep(0.05)
            if self._running(api, handle):
                raise BackendError(f"container {handle[:12]} still runs 10 s after SIGKILL")

    def _running(self, api: docker.APIClient, handle: str) -> bool:
        try:
            state = api.inspect_container(handle).get("State") or {}
        except docker.errors.NotFound:
            return False
        return bool(state.get("Running")) or str(state.get("Status") or "").lower() in RUNNING_STATES

    def fetch_outputs(self, handle: str, dest: Path) -> None:
        """Outputs are already in the bind-mounted job directory. stdout.log and stderr.log were streamed while the
        container ran (demultiplexed by the engine); here the streams are drained, or read whole if a stream broke."""
        dest = Path(dest)
        pumps = self._pumps.pop(handle, {})
        try:
            for stream, filename in STREAMS:
                pump = pumps.get(stream)
                if pump is not None:
                    pump.thread.join(self.log_drain_timeout)
                    if pump.thread.is_alive():
                        # Seen with Podman under load: a followed stream that does not end with its container.
                        pump.abandon()
                        log.warning("%s stream of container %s still open %g s after the container ended; "
                                    "reading it whole", stream, handle[:12], self.log_drain_timeout)
                    elif pump.error is None:
                        continue
                    else:
                        log.warning("%s stream of container %s broke (%s); reading it whole", stream, handle[:12],
                                    pump.error)
                    with open(dest / filename, "ab") as fh:
                        fh.truncate(pump.start)
                self._read_log(handle, stream, dest / filename)
        finally:
            self._reclaim(dest)

    def _read_log(self, handle: str, stream: str, path: Path) -> None:
        with self._engine(f"reading the {stream} of container {handle[:12]}") as api:
            try:
                chunks = api.logs(handle, stdout=stream == "stdout", stderr=stream == "stderr", stream=True,
                                  follow=False)
                with open(path, "ab") as fh:
                    for chunk in chunks:
                        fh.write(chunk)
            except docker.errors.NotFound as exc:
                raise BackendError(f"container {handle[:12]} is gone; its {stream} is lost") from exc

    def _reclaim(self, workdir: Path) -> None:
        """Give back to the worker's user what the container's user wrote (root only; inputs/ are not ours)."""
        if os.geteuid() != 0:
            return
        uid, gid = os.geteuid(), os.getegid()
        for root, dirs, files in os.walk(workdir):
            if Path(root) == workdir and "inputs" in dirs:
                dirs.remove("inputs")
            for name in dirs + files:
                path = os.path.join(root, name)
                st = os.lstat(path)
                if st.st_uid != uid:
                    os.lchown(path, uid, gid)

    def cleanup(self, handle: str) -> None:
        self._pumps.pop(handle, None)       # their streams end with the container
        with self._engine(f"removing container {handle[:12]}") as api:
            self._remove(api, handle)

    def _remove(self, api: docker.APIClient, handle: str) -> None:
        """Remove the container and its anonymous volumes; a container already gone is fine."""
        try:
            api.remove_container(handle, v=True, force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code == 409 and "already in progress" in str(exc):
                return
            raise BackendError(f"removing container {handle[:12]} failed: {explain(exc)}") from exc
