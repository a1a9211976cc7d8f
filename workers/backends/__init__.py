"""The backend implementations, one module each; the registry that names them lives in caesar_rest.backends
(re-exported here for the worker modules that still import it from this package)."""
from __future__ import annotations

from caesar_rest.backends import BACKEND_ALIASES, REGISTRY, _instances, backend_class, get_backend  # noqa: F401
