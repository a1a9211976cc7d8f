"""Backend registry: names resolve to import strings; an unknown or unconfigured backend fails loudly."""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from .base import Backend, BackendNotConfigured

BACKEND_ALIASES: dict[str, str] = {
    "local": "workers.backends.local:LocalBackend",
    "container": "workers.backends.container:ContainerBackend",
    "pulsar": "workers.backends.pulsar:PulsarBackend",
    "condor": "workers.backends.htcondor:HTCondorBackend",
    "batch": "workers.backends.batch:BatchBackend",
}

_instances: dict[tuple[str, int], Backend] = {}


def backend_class(name: str, options: Mapping[str, Any] | None = None) -> type:
    target = (options or {}).get("class") or BACKEND_ALIASES.get(name)
    if target is None:
        raise BackendNotConfigured(f"Unknown backend {name!r}; known: {sorted(BACKEND_ALIASES)}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendNotConfigured(f"Backend {name!r} cannot be loaded ({exc}); install its extra: "
                                   f"pip install 'caesar-rest[{name}]'") from exc
    return getattr(module, attr)


def get_backend(settings: Mapping[str, Any], name: str) -> Backend:
    """One instance per backend name and settings object in this process (backends may hold state)."""
    key = (name, id(settings))
    if key not in _instances:
        backends = settings.get("BACKENDS") or {}
        if name not in backends:
            raise BackendNotConfigured(f"Backend {name!r} is not enabled in BACKENDS ({sorted(backends)})")
        options = backends[name] or {}
        _instances[key] = backend_class(name, options)(settings, options)
    return _instances[key]
