"""Slurm's job states in this service's terms (README's table): a job record from slurmrestd (GET /job/{id}) as a
BackendStatus, with Slurm's own reasons."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import CANCELLED, EXITED, FAILED, LOST, QUEUED, RUNNING, BackendStatus

CANCEL_MARK = "; canceled through caesar-rest"
WAITING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}
ACTIVE = {"RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESIZING", "STOPPED"}
# Ends that are no fault of the job: LOST, which the runner's retries count as a node failure.
_NODE_TROUBLE = {"NODE_FAIL": "its node failed", "BOOT_FAIL": "its node failed to boot",
                 "PREEMPTED": "it was preempted"}
_OTHER_ENDS = {"DEADLINE": "it reached its deadline", "REVOKED": "it was revoked (federation)",
               "SPECIAL_EXIT": "it ended in a special exit state"}


def job_status(record: Mapping[str, Any]) -> BackendStatus:
    """A Slurm job record (GET /job/{id}) as a BackendStatus, with Slurm's reasons."""
    slurm_id = record.get("job_id")
    state = str(record.get("job_state") or "")
    reason = str(record.get("state_reason") or "None")
    host = str(record.get("batch_host") or record.get("nodes") or "") or None
    if state in WAITING:
        why = reason if reason != "None" else state.lower()
        return BackendStatus(QUEUED, reason=f"Waiting in Slurm as job {slurm_id} (partition "
                                            f"{record.get('partition')}): {why}")
    if state in ACTIVE:
        return BackendStatus(RUNNING, host=host)
    code = record.get("exit_code")
    status = code if isinstance(code, int) else None
    if state == "COMPLETED":
        return BackendStatus(EXITED, exit_code=0, host=host)
    if state == "FAILED" and status is not None and status & 0x7F:
        return BackendStatus(EXITED, exit_code=-(status & 0x7F), host=host)     # a wait status: killed by a signal
    if state == "FAILED" and status is not None and status >> 8:
        return BackendStatus(EXITED, exit_code=status >> 8, host=host)
    if state == "FAILED":
        return BackendStatus(FAILED, reason=f"Slurm failed job {slurm_id}: {reason}", host=host)
    if state == "TIMEOUT":
        return BackendStatus(FAILED, timed_out=True, host=host, reason=f"Slurm stopped job {slurm_id} at its time "
                                                                       f"limit of {record.get('time_limit')} min "
                                                                       "(TIMEOUT)")
    if state == "OUT_OF_MEMORY":
        limit = record.get("memory_per_node")
        return BackendStatus(FAILED, oom_killed=True, host=host,
                             reason=f"out of memory: the kernel killed job {slurm_id} past its memory limit"
                                    f"{f' of {limit} MB' if isinstance(limit, int) else ''} (Slurm: OUT_OF_MEMORY)")
    if state == "CANCELLED":
        if str(record.get("comment") or "").endswith(CANCEL_MARK):
            return BackendStatus(CANCELLED, reason="Job canceled by user", host=host)
        return BackendStatus(FAILED, host=host, reason=f"Slurm job {slurm_id} was cancelled outside caesar-rest "
                                                       f"(by its Slurm user {record.get('user_name')!r} or an "
                                                       "administrator: scancel)")
    if state in _NODE_TROUBLE:
        return BackendStatus(LOST, host=host, reason=f"Slurm ended job {slurm_id}: {_NODE_TROUBLE[state]} "
                                                     f"({state}, {reason}); running it again may succeed")
    if state in _OTHER_ENDS:
        return BackendStatus(FAILED, host=host, reason=f"Slurm ended job {slurm_id}: {_OTHER_ENDS[state]} "
                                                       f"({state}, {reason})")
    return BackendStatus(FAILED, reason=f"Slurm job {slurm_id} is in a state this service does not know: "
                                        f"{state!r} ({reason})", host=host)
