"""What the container backend asks of the engine besides containers: its errors in words, an image made present by
the pull policy, and the kernel's record of an out-of-memory kill (which Podman before 5.0 does not report)."""
from __future__ import annotations

import os
from contextlib import AbstractContextManager

import docker
import docker.errors
import requests.exceptions

from .base import BackendError, BackendUnavailable, translate_errors

PULL_POLICIES = ("never", "if-missing", "always")


def engine_errors(base_url: str, doing: str) -> AbstractContextManager[None]:
    """The Docker SDK's errors in the block become BackendUnavailable (cannot reach the engine: retried) or
    BackendError (the engine refused), naming the endpoint and what was being done."""
    def translate(exc: Exception) -> BackendError:
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return BackendUnavailable(f"cannot reach the container engine at {base_url} while {doing}: "
                                      f"{root_cause(exc)}")
        if isinstance(exc, docker.errors.APIError):
            return BackendError(f"the container engine at {base_url} failed {doing}: {explain(exc)}")
        return BackendUnavailable(f"container engine at {base_url}, {doing}: {exc}")
    return translate_errors((requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                             docker.errors.DockerException), translate)


def ensure_image(api: docker.APIClient, base_url: str, image: str, policy: str) -> None:
    """The image is on the engine once this returns (pulled when the policy says so), else BackendError."""
    present = True
    if policy != "always":
        try:
            api.inspect_image(image)
        except docker.errors.ImageNotFound:
            present = False
        except docker.errors.APIError as exc:
            raise BackendError(f"cannot inspect image {image}: {explain(exc)}") from exc
    if policy == "never" and not present:
        raise BackendError(f"image {image} is not on the container engine at {base_url} "
                           "and the app's image_pull policy is 'never'")
    if policy == "always" or not present:
        repository, tag = split_tag(image)
        failed = (f"image {image} is not on the container engine at {base_url} and pulling it failed "
                  f"(image_pull {policy!r})")
        try:
            # Docker reports a failed pull inside a 200 response's progress stream, not as an HTTP error.
            for event in api.pull(repository, tag=tag, stream=True, decode=True):
                if isinstance(event, dict) and event.get("error"):
                    raise BackendError(f"{failed}: {event['error']}")
            api.inspect_image(image)
        except docker.errors.APIError as exc:
            raise BackendError(f"{failed}: {explain(exc)}") from exc


def kernel_oom_killed(container_id: str) -> bool:
    """True when the kernel log (/dev/kmsg, readable by root on the engine's host) records an OOM kill in a
    memory cgroup named after the container (libpod-<id>, docker-<id>.scope, /docker/<id>...)."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False            # not root, or another host's engine: only the engine's flag can tell
    needle = container_id.encode()
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                return False    # read the whole ring buffer
            except BrokenPipeError:
                continue        # a record was overwritten while we read: go on with the next
            if not record:
                return False
            if b"oom_memcg=" in record and needle in record:
                return True
    finally:
        os.close(fd)


def split_tag(image: str) -> tuple[str, str | None]:
    if "@" in image:
        return image, None
    name, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return image, "latest"


def explain(exc: docker.errors.APIError) -> str:
    return str(getattr(exc, "explanation", None) or exc)


def root_cause(exc: BaseException) -> str:
    """The innermost error (e.g. FileNotFoundError for a missing socket), which says more than urllib3's wrapper."""
    seen: set[int] = set()
    while id(exc) not in seen and (exc.__cause__ or exc.__context__) is not None:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__   # type: ignore[assignment]
    return f"{exc.__class__.__name__}: {exc}"
