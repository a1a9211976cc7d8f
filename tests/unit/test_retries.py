"""Retries (issue 15): an app's `retries: {max, on}` runs an attempt again when it ended for a listed reason (lost,
node_failure, oom, timed_out), up to max, each in a fresh directory, every attempt recorded in the metadata. A
non-zero exit or a cancel is never retried; an app with no `retries` behaves as before. Real Runner on SQLite,
stand-in backends (tests/unit/standins.py): the reasons are what the real backends report (oom_killed, LOST)."""
from __future__ import annotations

from pathlib import Path

import pytest

from caesar_rest.apps import AppConfigError, load_app
from caesar_rest.backends import LOST
from caesar_rest.db import session_scope
from caesar_rest.models import Job
from workers.runner import Runner, reap

from ..support import API
from . import standins
from .test_runner_standins import claimed_by_a_dead_worker, job_row, states, submit


def run_until_done(app, job_id: str, limit: int = 5) -> list[str]:
    """Runner.run as a worker would get each published attempt; the outcomes in order."""
    outcomes = []
    for _ in range(limit):
        outcomes.append(Runner(app.config).run(job_id))
        if outcomes[-1] != "PENDING":
            break
    return outcomes


def test_an_attempt_killed_for_memory_runs_again_and_succeeds(standin_app, standin_client):
    job_id = submit(standin_client, "oomonce", app="probe-retry")
    assert run_until_done(standin_app, job_id) == ["PENDING", "SUCCESS"]
    row, events = job_row(standin_app, job_id)
    assert row["attempts"] == 2 and len(standins.jobs_of(job_id)) == 2
    assert states(events) == ["PENDING", "STARTED", "RUNNING", "PENDING", "STARTED", "RUNNING", "SUCCESS"]
    assert "Attempt 1 ended (oom)" in events[3][1] and "attempt 2 of 3" in events[3][1]
    meta = standin_client.get(f"{API}/job/{job_id}/metadata").get_json()
    first, = meta["retries"]["previous_attempts"]
    assert first["attempt"] == 1 and first["reason"] == "oom" and first["state"] == "FAILURE" and first["host"]
    assert first["started"] and first["ended"] and meta["retries"]["policy"]["max"] == 2
    assert Path(first["directory"]).is_dir() and Path(first["directory"]).name == f"{job_id}.attempt-1"
    assert (Path(row["workdir"]) / "result.txt").is_file()          # the second attempt's own directory


def test_timed_out_attempts_run_up_to_max_then_the_job_times_out(standin_app, standin_client):
    job_id = submit(standin_client, "hang", app="probe-retry")
    assert run_until_done(standin_app, job_id) == ["PENDING", "PENDING", "TIMED-OUT"]
    row, _events = job_row(standin_app, job_id)
    assert row["state"] == "TIMED-OUT" and row["attempts"] == 3
    assert [a["reason"] for a in row["extra"]["retried"]] == ["timed_out", "timed_out"]


def test_a_lost_attempt_is_run_again_when_the_app_retries_lost(standin_app, standin_client):
    job_id = submit(standin_client, "exit0", app="probe-retry")
    claimed_by_a_dead_worker(standin_app, job_id)
    published: list[tuple[str, str]] = []
    settings = {**standin_app.config, "REAPER_DB_GRACE": 0}
    result = reap(settings, publish=lambda j, b: published.append((j, b)), follow=lambda *a: None)
    assert result["retried"] == 1 and result["lost"] == 0 and published == [(job_id, "exit0")]
    assert job_row(standin_app, job_id)[0]["state"] == "PENDING"
    assert Runner(standin_app.config).run(job_id) == "SUCCESS"
    row, _events = job_row(standin_app, job_id)
    # (the dead worker's claim is written by hand, without its attempt count: the retry's claim counts 1)
    assert row["extra"]["retried"][0]["reason"] == "lost" and len(standins.jobs_of(job_id)) == 1


def test_a_backends_own_time_limit_is_timed_out_and_retried_as_such(standin_app, standin_client):
    job_id = submit(standin_client, "ownlimit", app="probe-retry")
    assert run_until_done(standin_app, job_id) == ["PENDING", "PENDING", "TIMED-OUT"]
    row, _events = job_row(standin_app, job_id)
    assert row["status"] == "the cluster stopped it at its time limit (TIMEOUT)"
    assert [a["reason"] for a in row["extra"]["retried"]] == ["timed_out", "timed_out"]


def test_a_non_zero_exit_is_never_retried(standin_app, standin_client):
    job_id = submit(standin_client, "exit3", app="probe-retry")
    assert run_until_done(standin_app, job_id) == ["FAILURE"]
    assert job_row(standin_app, job_id)[0]["attempts"] == 1


def test_a_cancel_wins_over_a_retry(standin_app, standin_client):
    job_id = submit(standin_client, "oomonce", app="probe-retry")
    with session_scope(standin_app.config["DATABASE_URL"]) as s:
        s.get(Job, job_id).cancel_requested = True          # asked while the attempt ran, seen at its end
    outcome = Runner(standin_app.config).run(job_id)
    assert outcome in ("FAILURE", "CANCELED") and job_row(standin_app, job_id)[0]["attempts"] == 1


def test_without_retries_an_app_ends_as_before(standin_app, standin_client):
    job_id = submit(standin_client, "hang", app="probe-limited")
    assert run_until_done(standin_app, job_id) == ["TIMED-OUT"]


def test_a_remote_attempt_its_backend_lost_is_a_node_failure(standin_app, standin_client, monkeypatch):
    settings = {**standin_app.config}
    job_id = submit(standin_client, "remote", app="probe-retry")
    runner = Runner(settings)
    assert runner.run(job_id) == "poll"
    forgot = standins.BackendStatus(LOST, reason="the backend forgot the job")
    monkeypatch.setattr(standins.Remote, "status", lambda self, ran: forgot)
    with session_scope(settings["DATABASE_URL"]) as s:
        s.get(Job, job_id).spec = {**s.get(Job, job_id).spec, "retries": {"max": 1, "on": ["node_failure"]}}
    assert runner.poll_once(job_id) == "PENDING"
    assert job_row(standin_app, job_id)[0]["extra"]["retried"][0]["reason"] == "node_failure"


@pytest.mark.parametrize("text, problem", [
    ("retries: 3", "must be a mapping"),
    ("retries: {max: 11}", "from 0 to 10"),
    ("retries: {max: two}", "whole number"),
    ("retries: {max: 1, on: [exit]}", "retries.on must be a list of lost, node_failure, oom, timed_out"),
    ("retries: {max: 1, every: 1}", "must be a mapping with 'max' and 'on'"),
])
def test_a_bad_retries_block_stops_the_service_naming_it(tmp_path, text, problem):
    path = tmp_path / "a.yml"
    path.write_text(f"name: a\ncommand: [x]\n{text}\n")
    with pytest.raises(AppConfigError, match=problem):
        load_app(path)
