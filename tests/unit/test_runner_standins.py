"""The engine end to end on the embedded SQLite database with stand-in backends (tests/unit/standins.py): a job made by
POST /job, driven by workers.runner.Runner(settings).run() in this process (no Celery, no worker), its end read from
the database rows. Only the engine's entry points are used: run, poll_once, declare_lost, the API and the job rows."""
from __future__ import annotations

import io
import socket
import tarfile
import threading
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from caesar_rest.db import session_scope
from caesar_rest.jobs import transition
from caesar_rest.models import Job, JobEvent, utcnow
from caesar_rest.states import JobState
from workers.runner import Runner

from ..support import API
from . import standins

HOST = socket.gethostname()


def submit(client, backend: str | None = None, app: str = "probe", **body: Any) -> str:
    request = {"app": app, "job_inputs": body.pop("job_inputs", {}), **body}
    if backend is not None:
        request["backend"] = backend
    response = client.post(f"{API}/job", json=request)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job_id"]


def job_row(app, job_id: str) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The job's row (as a dict) and its events (state, message), oldest first."""
    with session_scope(app.config["DATABASE_URL"]) as s:
        job = s.get(Job, job_id)
        row = {c.name: getattr(job, c.name) for c in Job.__table__.columns}
        events = [(e.state, e.message) for e in
                  s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))]
    return row, events


def states(events: list[tuple[str, str]]) -> list[str]:
    return [state for state, _message in events]


def wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    """Wait on an observable state (never a fixed sleep deciding the result)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Background:
    """Runner.run(job_id) on a thread, as a worker slot runs it; .result once it returns."""

    def __init__(self, app, job_id: str) -> None:
        self.result: str | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(app.config, job_id), daemon=True)
        self.thread.start()

    def _run(self, settings, job_id: str) -> None:
        try:
            self.result = Runner(settings).run(job_id)
        except BaseException as exc:        # reported by join()
            self.error = exc

    def join(self, timeout: float = 20.0) -> str | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the runner did not return"
        if self.error is not None:
            raise self.error
        return self.result


# ---- in-slot (blocking) stand-ins ------------------------------------------------------------------------------------
def test_a_job_that_exits_0_succeeds_with_its_outputs_and_every_step_recorded(standin_app, standin_client):
    job_id = submit(standin_client, job_inputs={"label": "two words; $(id)"})
    assert Runner(standin_app.config).run(job_id) == "SUCCESS"
    row, events = job_row(standin_app, job_id)
    assert row["state"] == "SUCCESS" and row["status"] == "Process terminated with success"
    assert row["exit_status"] == 0 and row["backend"] == "exit0" and row["host"] == HOST
    assert states(events) == ["PENDING", "STARTED", "RUNNING", "SUCCESS"]
    assert events[-1][1] == "Process terminated with success"
    assert row["start_date"] <= row["run_date"] <= row["end_date"] and row["elapsed"] is not None
    ran, = standins.jobs_of(job_id)
    assert ran.calls == ["submit", "poll", "fetch_outputs", "cleanup"]
    assert ran.spec.argv == ["probe-tool", "--mode", "fast", "--label", "two words; $(id)"]
    assert ran.spec.cpus == 2 and ran.spec.memory_mb == 512 and ran.spec.time_limit_s == 600
    manifest = {item["path"]: item for item in row["extra"]["outputs"]}
    assert set(manifest) == {"result.txt", "stdout.log", "stderr.log"}
    result = b"probe-tool --mode fast --label two words; $(id)\n"
    assert manifest["result.txt"]["size_bytes"] == len(result) and len(manifest["result.txt"]["sha256"]) == 64
    status = standin_client.get(f"{API}/job/{job_id}/status").get_json()
    assert status["state"] == "SUCCESS" and status["exit_status"] == 0
    tarball = standin_client.get(f"{API}/job/{job_id}/output")
    assert tarball.status_code == 200
    assert tarball.headers["Content-Disposition"] == f'attachment; filename="job_{job_id}.tar.gz"'
    with tarfile.open(fileobj=io.BytesIO(tarball.data), mode="r:gz") as tar:
        assert {m.name.split("/", 1)[0] for m in tar} == {f"job_{job_id}"}
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar if m.isfile()}
    assert files["result.txt"] == result and "caesar_job.json" in files


def test_a_non_zero_exit_fails_with_the_status_and_stderr_s_last_line(standin_app, standin_client):
    job_id = submit(standin_client, "exit3")
    assert Runner(standin_app.config).run(job_id) == "FAILURE"
    row, events = job_row(standin_app, job_id)
    assert row["exit_status"] == 3 and row["status"] == "Process exited with status 3: probe: bad input"
    assert states(events) == ["PENDING", "STARTED", "RUNNING", "FAILURE"]
    assert {item["path"] for item in row["extra"]["outputs"]} == {"result.txt", "stdout.log", "stderr.log"}


def test_a_refused_submission_aborts_the_job_with_the_backend_s_reason(standin_app, standin_client):
    job_id = submit(standin_client, "refuse")
    assert Runner(standin_app.config).run(job_id) == "ABORTED"
    row, events = job_row(standin_app, job_id)
    assert row["status"] == "The refuse backend did not start the job: no free slots on the stand-in"
    assert row["exit_status"] is None and row["run_date"] is None
    assert states(events) == ["PENDING", "STARTED", "ABORTED"]


def test_a_backend_the_worker_does_not_have_aborts_the_job_naming_it(standin_app, standin_client):
    job_id = submit(standin_client, "exit0")
    worker_settings = {**standin_app.config, "BACKENDS": {"local": {}}}
    assert Runner(worker_settings).run(job_id) == "ABORTED"
    row, events = job_row(standin_app, job_id)
    assert "Backend 'exit0' unavailable on worker" in row["status"] and states(events)[-1] == "ABORTED"
    assert standins.jobs_of(job_id) == []


def test_an_unreachable_poll_in_the_slot_is_waited_out(standin_app, standin_client):
    job_id = submit(standin_client, "flaky")
    assert Runner(standin_app.config).run(job_id) == "SUCCESS"
    ran, = standins.jobs_of(job_id)
    assert ran.unreachable == 3 and ran.polls == 1          # failures: 3 in conftest's BACKENDS
    assert states(job_row(standin_app, job_id)[1]) == ["PENDING", "STARTED", "RUNNING", "SUCCESS"]


def test_a_cancel_reaches_the_running_job_and_ends_it_canceled(standin_app, standin_client):
    job_id = submit(standin_client, "hang")
    worker = Background(standin_app, job_id)
    wait_for(lambda: job_row(standin_app, job_id)[0]["state"] == "RUNNING", "the job to run")
    assert standin_client.post(f"{API}/job/{job_id}/cancel").get_json()["cancel_requested"] is True
    assert worker.join() == "CANCELED"
    row, events = job_row(standin_app, job_id)
    assert row["status"] == "Job canceled by user" and row["cancel_requested"] is True
    assert states(events) == ["PENDING", "STARTED", "RUNNING", "CANCELED"]
    ran, = standins.jobs_of(job_id)
    assert "cancel" in ran.calls and ran.calls[-2:] == ["fetch_outputs", "cleanup"]


def test_a_job_canceled_while_pending_never_reaches_the_backend(standin_app, standin_client):
    job_id = submit(standin_client, "exit0")
    assert standin_client.post(f"{API}/job/{job_id}/cancel").get_json()["status"].startswith("Job canceled")
    assert Runner(standin_app.config).run(job_id) == "CANCELED"      # the message arrives after the cancel
    assert states(job_row(standin_app, job_id)[1]) == ["PENDING", "CANCELED"]
    assert standins.jobs_of(job_id) == []


def test_a_job_past_its_time_limit_is_stopped_and_timed_out(standin_app, standin_client):
    job_id = submit(standin_client, "hang", app="probe-limited")
    assert Runner(standin_app.config).run(job_id) == "TIMED-OUT"
    row, events = job_row(standin_app, job_id)
    assert row["status"] == "Job exceeded its time limit of 1 s and was stopped"
    assert states(events) == ["PENDING", "STARTED", "RUNNING", "TIMED-OUT"]
    assert (row["end_date"] - row["run_date"]).total_seconds() >= 1
    assert "cancel" in standins.jobs_of(job_id)[0].calls


def test_a_redelivered_message_for_a_running_job_is_a_duplicate(standin_app, standin_client):
    job_id = submit(standin_client, "hang")
    worker = Background(standin_app, job_id)
    wait_for(lambda: job_row(standin_app, job_id)[0]["state"] == "RUNNING", "the job to run")
    assert Runner(standin_app.config).run(job_id) == "duplicate"
    assert len(standins.jobs_of(job_id)) == 1
    standin_client.post(f"{API}/job/{job_id}/cancel")
    assert worker.join() == "CANCELED"


def test_a_redelivered_message_for_a_finished_job_runs_nothing(standin_app, standin_client):
    job_id = submit(standin_client, "exit0")
    runner = Runner(standin_app.config)
    assert runner.run(job_id) == "SUCCESS"
    assert runner.run(job_id) == "SUCCESS"
    assert len(standins.jobs_of(job_id)) == 1
    assert states(job_row(standin_app, job_id)[1]) == ["PENDING", "STARTED", "RUNNING", "SUCCESS"]


# ---- lost workers ----------------------------------------------------------------------------------------------------
def claimed_by_a_dead_worker(app, job_id: str) -> None:
    """The job as a worker leaves it that claimed it and died: STARTED on this host, its heartbeat long stale."""
    stale = utcnow() - timedelta(seconds=float(app.config["STALE_AFTER"]) + 60)
    with session_scope(app.config["DATABASE_URL"]) as s:
        assert transition(s, job_id, "STARTED", f"Worker {HOST} took the job; staging inputs", host=HOST,
                          start_date=stale, heartbeat_at=stale)


def test_a_redelivery_of_a_job_whose_worker_died_declares_it_lost(standin_app, standin_client):
    job_id = submit(standin_client, "exit0")
    claimed_by_a_dead_worker(standin_app, job_id)
    assert Runner(standin_app.config).run(job_id) == "FAILURE"
    row, events = job_row(standin_app, job_id)
    assert row["status"].startswith("Job lost: the worker running it died while it was STARTED")
    assert "it was not re-run" in row["status"] and states(events) == ["PENDING", "STARTED", "FAILURE"]
    assert standins.jobs_of(job_id) == []


def test_declare_lost_ends_an_in_slot_job_with_the_reason(standin_app, standin_client):
    job_id = submit(standin_client, "exit0")
    claimed_by_a_dead_worker(standin_app, job_id)
    runner = Runner(standin_app.config)
    assert runner.declare_lost(job_id, "no heartbeat from its worker") == "FAILURE"
    assert "Job lost: no heartbeat from its worker" in job_row(standin_app, job_id)[0]["status"]
    assert runner.declare_lost(job_id, "again") == "FAILURE"          # a finished job stays as it ended
    assert states(job_row(standin_app, job_id)[1]) == ["PENDING", "STARTED", "FAILURE"]


def test_a_loss_judged_for_one_attempt_leaves_the_next_attempt_alone(standin_app, standin_client):
    """Two judges (the reaper, a redelivered message) may find the same attempt lost; the first one's retry starts
    attempt 2 while the other's judgment of attempt 1 is still on its way. That late one must neither end nor
    re-queue attempt 2 (in CI the reaper's late call killed the retry's processes as orphans: exit 143)."""
    job_id = submit(standin_client, "exit0")
    claimed_by_a_dead_worker(standin_app, job_id)
    with session_scope(standin_app.config["DATABASE_URL"]) as s:     # the claim of attempt 2 by a live worker
        s.execute(Job.__table__.update().where(Job.id == job_id).values(attempts=2, heartbeat_at=utcnow()))
    runner = Runner(standin_app.config)
    assert runner.declare_lost(job_id, "no heartbeat from its worker", attempt=1) == "moved on"
    row, events = job_row(standin_app, job_id)
    assert row["state"] == "STARTED" and row["attempts"] == 2 and states(events) == ["PENDING", "STARTED"]
    # The same guard in the end itself: an end for attempt 1 that got past the first look changes nothing.
    from workers.kinds import Ending
    assert runner.end(job_id, Ending(JobState.FAILURE, "Job lost: late", retry_reason="lost", attempt=1)) == "STARTED"
    assert job_row(standin_app, job_id)[0]["state"] == "STARTED"
    assert runner.declare_lost(job_id, "no heartbeat from its worker", attempt=2) == "FAILURE"


# ---- a remote (non-blocking) stand-in, followed by poll_once ---------------------------------------------------------
def test_a_remote_job_is_submitted_then_followed_poll_by_poll(standin_app, standin_client):
    job_id = submit(standin_client, "remote")
    runner = Runner(standin_app.config)
    assert runner.run(job_id) == "poll"                         # submitted; its first poll saw it queued
    row, events = job_row(standin_app, job_id)
    assert row["state"] == "STARTED" and row["handle"].startswith("remote-")
    assert row["status"] == "Waiting in the stand-in queue: Resources"      # the backend's reason, while it waits
    assert runner.poll_once(job_id) == "poll"
    assert job_row(standin_app, job_id)[0]["state"] == "RUNNING"
    assert runner.poll_once(job_id) == "SUCCESS"
    row, events = job_row(standin_app, job_id)
    assert row["exit_status"] == 0 and row["status"] == "Process terminated with success"
    assert states(events) == ["PENDING", "STARTED", "RUNNING", "SUCCESS"]
    assert "result.txt" in {item["path"] for item in row["extra"]["outputs"]}
    assert runner.poll_once(job_id) == "SUCCESS"                # a late poll task changes nothing
    ran, = standins.jobs_of(job_id)
    assert ran.calls == ["submit", "poll", "poll", "poll", "fetch_outputs", "cleanup"]


def test_a_remote_job_s_cancel_is_honoured_at_its_next_poll(standin_app, standin_client):
    job_id = submit(standin_client, "remote", backend_options={"script": "forever"})
    runner = Runner(standin_app.config)
    assert runner.run(job_id) == "poll" and runner.poll_once(job_id) == "poll"
    standin_client.post(f"{API}/job/{job_id}/cancel")
    assert runner.poll_once(job_id) == "CANCELED"
    row, events = job_row(standin_app, job_id)
    assert row["status"] == "Job canceled by user" and states(events)[-2:] == ["RUNNING", "CANCELED"]
    assert "cancel" in standins.jobs_of(job_id)[0].calls


def test_a_remote_job_past_its_time_limit_is_stopped_and_timed_out(standin_app, standin_client):
    job_id = submit(standin_client, "remote", app="probe-limited", backend_options={"script": "forever"})
    runner = Runner(standin_app.config)
    results = [runner.run(job_id)]
    wait_for(lambda: results.append(runner.poll_once(job_id)) or results[-1] != "poll", "the time limit")
    assert results[-1] == "TIMED-OUT" and set(results[:-1]) == {"poll"}
    row, events = job_row(standin_app, job_id)
    assert row["status"] == "Job exceeded its time limit of 1 s and was stopped"
    assert states(events) == ["PENDING", "STARTED", "RUNNING", "TIMED-OUT"]
    assert "cancel" in standins.jobs_of(job_id)[0].calls


def test_an_unknown_backend_option_is_refused_at_submission(standin_client):
    response = standin_client.post(f"{API}/job", json={"app": "probe", "backend": "remote",
                                                       "backend_options": {"script": "sideways"}})
    assert response.status_code == 400 and "'script' must be one of" in response.get_json()["status"] + \
        str(response.get_json())
    response = standin_client.post(f"{API}/job", json={"app": "probe", "backend": "exit0",
                                                       "backend_options": {"script": "forever"}})
    assert response.status_code == 400 and "takes no option 'script'" in str(response.get_json())


def test_a_remote_backend_unreachable_for_a_while_is_followed_on(standin_app, standin_client):
    job_id = submit(standin_client, "remote_flaky")
    runner = Runner(standin_app.config)
    assert runner.run(job_id) == "poll"                          # refusal 1: unreachable since now
    assert job_row(standin_app, job_id)[0]["unreachable_since"] is not None
    assert runner.poll_once(job_id) == "poll"                    # refusal 2, within REMOTE_UNREACHABLE_TIMEOUT
    assert runner.poll_once(job_id) == "poll"                    # answers: queued
    assert job_row(standin_app, job_id)[0]["unreachable_since"] is None
    assert runner.poll_once(job_id) == "poll" and runner.poll_once(job_id) == "SUCCESS"


def test_a_remote_backend_unreachable_too_long_fails_the_job(standin_app, standin_client):
    job_id = submit(standin_client, "remote_flaky")
    runner = Runner({**standin_app.config, "REMOTE_UNREACHABLE_TIMEOUT": 0})
    assert runner.run(job_id) == "poll"
    assert runner.poll_once(job_id) == "FAILURE"
    row, events = job_row(standin_app, job_id)
    assert row["status"].startswith("The remote_flaky backend lost the job: the remote_flaky backend was unreachable")
    assert states(events) == ["PENDING", "STARTED", "FAILURE"]
    assert "fetch_outputs" not in standins.jobs_of(job_id)[0].calls      # nothing to fetch from a silent backend


def test_a_lost_follower_of_a_remote_job_means_following_it_again(standin_app, standin_client):
    job_id = submit(standin_client, "remote")
    runner = Runner(standin_app.config)
    assert runner.run(job_id) == "poll"
    assert runner.declare_lost(job_id, "no heartbeat from its worker") == "poll"
    assert job_row(standin_app, job_id)[0]["state"] == "STARTED"     # the remote job may well be alive
    assert runner.poll_once(job_id) == "poll" and runner.poll_once(job_id) == "SUCCESS"
