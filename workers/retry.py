"""Retries: an attempt that ended for a reason its job retries on runs again, up to the job's max, in a fresh
directory. The policy is the app's `retries: {max: N, on: [...]}` (caesar_rest/apps.py RETRY_REASONS), kept in the
job's spec when it was submitted, or for TES tasks the TES_RETRIES setting. The default is no retry.

The runner classifies the end of an attempt (reason_of) and Runner.end asks again() before recording any end:
the job goes back to PENDING (states.TRANSITIONS: STARTED/RUNNING -> PENDING, "a retry"), its attempt is appended
to extra.retried (reason, times, host, state and status it would have ended with, where its directory was kept),
its directory moves aside to <id>.attempt-<n>, and the caller publishes it again. A cancel always wins."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caesar_rest.backends import LOST
from caesar_rest.db import json_merge, session_scope
from caesar_rest.models import JOBS, Job, utcnow
from caesar_rest.states import FAILURE, PENDING, RUNNING, STARTED, TIMED_OUT, Claim, transition

from .kinds import Ending, StepResult

if TYPE_CHECKING:
    from .runner import Runner

log = logging.getLogger("caesar.runner")


def reason_of(result: StepResult | None) -> str | None:
    """Why the attempt ended, when it is a reason a job may retry on; None for an exit of its own (never retried)."""
    if result is None:
        return None
    if result.outcome == "timeout":
        return "timed_out"
    if result.outcome == "canceled":
        return None
    if result.status.oom_killed:
        return "oom"
    if result.status.state == LOST:
        return "node_failure"
    return None


def policy_of(job: Job) -> dict[str, Any] | None:
    found = (job.spec or {}).get("retries")      # an app's, or a TES task's (TES_RETRIES, backend_parameters)
    return found if isinstance(found, dict) and int(found.get("max") or 0) > 0 else None


def again(runner: Runner, held: Claim | str, how: Ending) -> str | None:
    """PENDING when the job is queued again for another attempt (the caller publishes it); None to end as usual."""
    if how.retry_reason is None or how.state not in (FAILURE, TIMED_OUT):
        return None
    job_id = held.id if isinstance(held, Claim) else held
    now = utcnow()
    with session_scope(runner.url) as s:
        job = s.get(Job, job_id)
        if job is None or job.state not in (STARTED, RUNNING) or job.cancel_requested \
                or (how.attempt is not None and job.attempts != how.attempt):
            return None
        policy = policy_of(job)
        attempt = int(job.attempts or 1)
        if policy is None or how.retry_reason not in policy.get("on", ()) or attempt > int(policy["max"]):
            return None
        workdir = Path(job.workdir)
        aside = workdir.with_name(f"{workdir.name}.attempt-{attempt}")
        record = {"attempt": attempt, "reason": how.retry_reason, "state": str(how.state), "status": how.message,
                  "host": job.host, "started": _iso(job.start_date), "running": _iso(job.run_date),
                  "ended": _iso(now), "directory": str(aside)}
        retried = [*((job.extra or {}).get("retried") or []), record]
        message = (f"Attempt {attempt} ended ({how.retry_reason}): {how.message}; queued again for attempt "
                   f"{attempt + 1} of {int(policy['max']) + 1}")
        # republished_at now: the reaper leaves the new message alone for a period (the caller publishes at once).
        moved = transition(s, job_id, PENDING, message, from_states=(STARTED, RUNNING), at_attempt=job.attempts,
                           extra=json_merge(JOBS.c.extra, {"retried": retried}), handle=None, pid=None, host=None,
                           follower=None, heartbeat_at=None, run_date=None, start_date=None, exit_status=None,
                           unreachable_since=None, republished_at=now)
        if not moved:
            return None
    try:
        if workdir.exists():
            workdir.rename(aside)       # before the message goes out: the next attempt stages into a fresh one
    except OSError as exc:
        log.warning("job %s: attempt %d's directory not kept aside: %s", job_id, attempt, exc)
    log.info("job %s: attempt %d ended (%s), retrying", job_id, attempt, how.retry_reason)
    return PENDING.value


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
