"""The Backend protocol and its data, re-exported from caesar_rest.backends (where the API imports them without
importing the workers) for the worker modules that still import them from here."""
from __future__ import annotations

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

__all__ = ["CANCELLED", "EXITED", "FAILED", "LOST", "QUEUED", "RUNNING", "Backend", "BackendBase", "BackendError",
           "BackendNotConfigured", "BackendStatus", "BackendUnavailable", "InputFile", "JobSpec", "poll_in_slot",
           "translate_errors"]
