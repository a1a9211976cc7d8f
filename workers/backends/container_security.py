"""What a container job may do: the hardening every job container gets, its user, its network and its image."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caesar_rest import images

from .base import BackendError, BackendNotConfigured

USER_RE = re.compile(r"^(?:root|\d{1,10})(?::\d{1,10})?$")
TMPFS_SIZE_RE = re.compile(r"^\d{1,12}[kmg]?$")
DEFAULT_PIDS_LIMIT = 1024       # far above what the shipped apps need (threads count too), far below a fork bomb
DEFAULT_TMPFS_SIZE = "1g"       # the tmpfs /tmp; its pages count against the job's memory limit as well
# Options a job's request may never set, though an app's YAML (the operator) may: who the container runs as.
OPERATOR_ONLY = ("user",)


def check_user(value: Any) -> str | None:
    """A message when value is not a container user this backend accepts: 'root', 'uid' or 'uid:gid' (numeric)."""
    if value is None:
        return None
    if not isinstance(value, str) or not USER_RE.match(value):
        return (f"container user {value!r} must be 'root', a numeric uid or 'uid:gid' (numeric ids work in any "
                "image, with or without /etc/passwd)")
    return None


def refuse_job_options(options: Mapping[str, Any]) -> str | None:
    """The message for a request that asks for what only the operator decides (the container's user)."""
    for name in OPERATOR_ONLY:
        if name in options:
            return (f"option {name!r} cannot be set by a job: the container user comes from the app or the "
                    "backend settings (BACKENDS.container.user)")
    return None


def checked_image(settings: Mapping[str, Any], image: str) -> str:
    """The image to ask the engine for. With ALLOWED_IMAGES set: checked again here (the API refused such a job
    already, unless settings differ), and as the full reference that was matched, so that Podman's short-name
    search (registries.conf) cannot fetch a same-named image from a registry the list does not allow."""
    if images.patterns(settings) is None:
        return image
    problem = images.refusal(settings, image)
    if problem:
        raise BackendError(problem)
    return images.full_reference(image)


def input_groups(inputs: Path, user: str) -> list[str]:
    """Groups of the staged inputs (0440 hard links to the uploads) besides the container user's own: they are
    read through their group, whichever it is (another backend's sandbox may have given them its own)."""
    gid = user.partition(":")[2]
    found = {str(path.stat().st_gid) for path in inputs.rglob("*") if path.is_file() and not path.is_symlink()}
    return sorted(found - {gid})


@dataclass(frozen=True)
class Hardening:
    """The HostConfig every job container gets: no capabilities, no new privileges, a pids limit, a read-only root
    filesystem with a tmpfs /tmp, and no network unless the app declares `network: true`."""

    pids_limit: int = DEFAULT_PIDS_LIMIT
    tmpfs_size: str = DEFAULT_TMPFS_SIZE
    network: str = "none"           # network mode of every job
    app_network: str = "bridge"     # network mode of jobs whose app declares network: true

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Hardening:
        pids = options.get("pids_limit", DEFAULT_PIDS_LIMIT)
        size = str(options.get("tmpfs_size", DEFAULT_TMPFS_SIZE)).lower()
        if isinstance(pids, bool) or not isinstance(pids, int) or pids < 16:
            raise BackendNotConfigured(f"BACKENDS['container'].pids_limit must be a whole number of at least 16, "
                                       f"not {pids!r}")
        if not TMPFS_SIZE_RE.match(size):
            raise BackendNotConfigured(f"BACKENDS['container'].tmpfs_size must be a size like 512m or 1g, not {size!r}")
        network = str(options.get("network") or "none")
        app_network = str(options.get("app_network") or "bridge")
        return cls(pids_limit=pids, tmpfs_size=size, network=network, app_network=app_network)

    def network_mode(self, job_options: Mapping[str, Any]) -> str:
        """`network: true` comes from the app's YAML (JobSpec.options["network"]); a request cannot set it."""
        return self.app_network if job_options.get("network") is True and self.network == "none" else self.network

    def host_config(self, job_options: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of docker.APIClient.create_host_config (podman_args: the same as podman run options)."""
        return {
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": self.pids_limit,
            "read_only": True,
            # nosuid, nodev: nothing on the scratch may raise privileges or open devices.
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={self.tmpfs_size},mode=1777"},
            "network_mode": self.network_mode(job_options),
        }

    def podman_args(self, job_options: Mapping[str, Any], cpus: float, memory_mb: int | None) -> list[str]:
        """host_config and resource_limits as `podman run` options, for a runtime driven by its command line (the
        Slurm backend's nodes): one definition of the hardening, two spellings."""
        config = {**self.host_config(job_options), **resource_limits(cpus, memory_mb)}
        args = [f"--cap-drop={cap}" for cap in config.pop("cap_drop")]
        args += [f"--security-opt={opt}" for opt in config.pop("security_opt")]
        args.append(f"--pids-limit={config.pop('pids_limit')}")
        if config.pop("read_only"):
            args.append("--read-only")
        args += [f"--tmpfs={path}:{opts}" for path, opts in config.pop("tmpfs").items()]
        args.append(f"--network={config.pop('network_mode')}")
        args.append(f"--cpus={config.pop('nano_cpus') / 1e9:g}")
        if "mem_limit" in config:
            args += [f"--memory={config.pop('mem_limit')}", f"--memory-swap={config.pop('memswap_limit')}"]
        if config:
            raise BackendNotConfigured(f"the container hardening has options podman_args cannot spell: "
                                       f"{sorted(config)}")
        return args


def resource_limits(cpus: float, memory_mb: int | None) -> dict[str, Any]:
    """A job's cpu and memory limits, as docker.APIClient.create_host_config arguments; no swap beyond the memory."""
    limits: dict[str, Any] = {"nano_cpus": max(1, int(float(cpus) * 1e9))}
    if memory_mb:
        limits["mem_limit"] = limits["memswap_limit"] = f"{int(memory_mb)}m"
    return limits
