"""Nothing lost, nothing doubled (issue 15), on the engine with stand-in backends: outputs kept until fetched and
the end recorded, fetches retried, a heartbeat for every phase a worker holds a job in, one poll chain per remote
job, a reaper that republishes a PENDING job at most once a period and waits out a database gap before it judges
heartbeats. Real Runner, real SQLite; only the backends are stand-ins (tests/unit/standins.py)."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from caesar_rest.celery_app import CONTROL_QUEUE, NOTIFY_SWEEP_TASK, REAP_TASK, make_celery
from caesar_rest.db import session_scope
from caesar_rest.errors import Conflict
from caesar_rest.models import Job, Mark, utcnow
from workers import kept
from workers.runner import Runner, reap

from . import standins
from .test_runner_standins import job_row, states, submit


def test_a_fetch_that_fails_once_is_retried_and_the_job_succeeds(standin_app, standin_client):
    job_id = submit(standin_client, "fetchfail")
    assert Runner(standin_app.config).run(job_id) == "SUCCESS"
    ran, = standins.jobs_of(job_id)
    assert ran.calls == ["submit", "poll", "fetch_outputs", "fetch_outputs", "cleanup"]
    assert "result.txt" in {item["path"] for item in job_row(standin_app, job_id)[0]["extra"]["outputs"]}


def test_a_remote_copy_is_removed_only_after_the_end_is_recorded(standin_app, standin_client):
    job_id = submit(standin_client, "remote_fetchfail")
    runner = Runner(standin_app.config)
    assert runner.run(job_id) == "poll"
    while (outcome := runner.poll_once(job_id)) == "poll":
        pass
    assert outcome == "SUCCESS"
    ran, = standins.jobs_of(job_id)
    assert ran.calls[-3:] == ["fetch_outputs", "fetch_outputs", "cleanup"]
    assert ran.state_at_cleanup == "SUCCESS"            # the old runner removed it before the end was recorded


def test_a_remote_copy_whose_fetch_keeps_failing_is_kept_named_and_refetched(standin_app, standin_client):
    settings = {**standin_app.config, "FETCH_ATTEMPTS": 2}
    job_id = submit(standin_client, "remote_nofetch")
    runner = Runner(settings)
    assert runner.run(job_id) == "poll"
    while (outcome := runner.poll_once(job_id)) == "poll":
        pass
    assert outcome == "FAILURE"
    ran, = standins.jobs_of(job_id)
    assert "cleanup" not in ran.calls and ran.calls.count("fetch_outputs") == 2     # the copy is still there
    row, events = job_row(standin_app, job_id)
    assert "fetching outputs failed: download cut after 1 MiB" in row["status"]
    assert f"copy of the job is kept ({ran_handle(job_id)})" in row["status"]
    assert f"caesar-rest job refetch {job_id}" in row["status"]
    assert row["extra"]["kept_remote"]["backend"] == "remote_nofetch" and states(events)[-1] == "FAILURE"

    done = kept.refetch(settings, job_id)
    assert done["outputs"] >= 3 and ran.calls[-2:] == ["fetch_outputs", "cleanup"]
    row, _events = job_row(standin_app, job_id)
    assert "result.txt" in {item["path"] for item in row["extra"]["outputs"]}
    assert row["extra"]["kept_remote"]["refetched"] and row["state"] == "FAILURE"
    with pytest.raises(Conflict, match="fetched again"):
        kept.refetch(settings, job_id)


def ran_handle(job_id: str) -> str:
    ran, = standins.jobs_of(job_id)
    return next(handle for handle, r in standins.SUBMITTED.items() if r is ran)


def test_refetch_refuses_a_job_with_nothing_kept(standin_app, standin_client):
    job_id = submit(standin_client, "exit0")
    assert Runner(standin_app.config).run(job_id) == "SUCCESS"
    with pytest.raises(Conflict, match="no copy kept"):
        kept.refetch(standin_app.config, job_id)


def test_a_slow_submission_keeps_its_heartbeat_and_is_not_declared_lost(standin_app, standin_client):
    # The stand-in takes 1.5 s to accept the job; heartbeats are 0.05 s apart, staleness 0.5 s, and the reaper runs
    # all along. Before the heartbeat thread, the claim's heartbeat went stale during submit: FAILURE "Job lost".
    settings = {**standin_app.config, "STALE_AFTER": 0.5, "REAPER_DB_GRACE": 0}
    job_id = submit(standin_client, "slow")
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(Runner(settings).run(job_id)))
    worker.start()
    reaped = []
    while worker.is_alive():
        reaped.append(reap(settings, publish=lambda *a: None, follow=lambda *a: None))
        worker.join(0.1)
    assert result == ["SUCCESS"], job_row(standin_app, job_id)[0]["status"]
    assert len(reaped) >= 10 and all(r["lost"] == 0 and r["judged_staleness"] for r in reaped)


def test_one_poll_chain_follows_a_remote_job(standin_app, standin_client):
    job_id = submit(standin_client, "remote")
    first = Runner(standin_app.config)
    assert first.run(job_id) == "poll" and first.follower
    chain = first.follower
    assert Runner(standin_app.config).poll_once(job_id) == "followed"        # a second chain, the first alive
    assert Runner(standin_app.config).poll_once(job_id, follower=chain) == "poll"
    # The first chain goes silent past STALE_AFTER: a new one takes the job over, and the old one stops.
    with session_scope(standin_app.config["DATABASE_URL"]) as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=3600)))
    second = Runner(standin_app.config)
    assert second.poll_once(job_id) == "SUCCESS" and second.follower != chain
    assert Runner(standin_app.config).poll_once(job_id, follower=chain) == "SUCCESS"   # ended: nothing to do
    ran, = standins.jobs_of(job_id)
    assert ran.calls.count("fetch_outputs") == 1 and ran.calls.count("cleanup") == 1


def test_a_stale_chain_that_comes_back_stops(standin_app, standin_client):
    job_id = submit(standin_client, "remote", backend_options={"script": "forever"})
    first = Runner(standin_app.config)
    assert first.run(job_id) == "poll"
    with session_scope(standin_app.config["DATABASE_URL"]) as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=3600)))
    assert Runner(standin_app.config).poll_once(job_id) == "poll"          # took over
    assert first.poll_once(job_id) == "followed"


def backdate(app, job_ids, seconds, column="submit_date"):
    with session_scope(app.config["DATABASE_URL"]) as s:
        s.execute(update(Job).where(Job.id.in_(job_ids)).values({column: utcnow() - timedelta(seconds=seconds)}))


def test_a_pending_job_is_republished_at_most_once_per_period(standin_app, standin_client):
    settings = {**standin_app.config, "PENDING_REPUBLISH_AFTER": 60}
    ids = [submit(standin_client, "exit0") for _ in range(3)]
    backdate(standin_app, ids, 120)
    published: list[str] = []
    for _ in range(3):                        # three reaper periods: before, each run republished the backlog
        reap(settings, publish=lambda job_id, _b: published.append(job_id), follow=lambda *a: None)
    assert sorted(published) == sorted(ids)
    backdate(standin_app, ids, 61, column="republished_at")        # a period later: once more each
    reap(settings, publish=lambda job_id, _b: published.append(job_id), follow=lambda *a: None)
    assert sorted(published) == sorted(ids * 2)


def marks(app, **ago):
    with session_scope(app.config["DATABASE_URL"]) as s:
        for name, seconds in ago.items():
            s.merge(Mark(name=name, at=utcnow() - timedelta(seconds=seconds)))


def test_after_a_gap_the_reaper_waits_before_judging_heartbeats(standin_app, standin_client):
    settings = {**standin_app.config, "STALE_AFTER": 30, "REAPER_INTERVAL": 15}
    job_id = submit(standin_client, "exit0")
    from .test_runner_standins import claimed_by_a_dead_worker

    claimed_by_a_dead_worker(standin_app, job_id)            # STARTED, heartbeat 90 s old (the pid check: none)
    quiet = dict(publish=lambda *a: None, follow=lambda *a: None)
    first = reap(settings, **quiet)                              # the first run ever: a gap by definition
    assert first["judged_staleness"] == 0 and job_row(standin_app, job_id)[0]["state"] == "STARTED"
    marks(standin_app, reaper_seen=10, reaper_since=40)        # 40 s of runs with no gap: past the grace
    assert reap(settings, **quiet)["lost"] == 1
    assert job_row(standin_app, job_id)[0]["state"] == "FAILURE"

    other = submit(standin_client, "exit0")
    claimed_by_a_dead_worker(standin_app, other)
    marks(standin_app, reaper_seen=120, reaper_since=600)      # the database was away for two minutes
    assert reap(settings, **quiet)["judged_staleness"] == 0
    assert job_row(standin_app, other)[0]["state"] == "STARTED"


def test_the_reaper_runs_on_its_own_control_queue(standin_app):
    conf = make_celery(standin_app.config).conf
    entries = {entry["task"]: entry for entry in conf.beat_schedule.values()}
    assert set(entries) == {REAP_TASK, NOTIFY_SWEEP_TASK}          # the reaper, and the notifications' sweep
    assert all(entry["options"]["queue"] == CONTROL_QUEUE for entry in entries.values())
    assert CONTROL_QUEUE in {q.name for q in conf.task_queues}


def test_the_refetch_command_names_what_it_did_and_refuses_with_a_reason(standin_app, standin_client, monkeypatch,
                                                                         capsys):
    from caesar_rest import cli

    settings = {**standin_app.config, "FETCH_ATTEMPTS": 2}
    monkeypatch.setattr(cli, "load_settings", lambda *a, **k: settings)
    job_id = submit(standin_client, "remote_nofetch")
    runner = Runner(settings)
    assert runner.run(job_id) == "poll"
    while runner.poll_once(job_id) == "poll":
        pass
    assert cli.main(["job", "refetch", job_id]) == 0
    assert f'"job_id": "{job_id}"' in capsys.readouterr().out
    assert cli.main(["job", "refetch", job_id]) == 1
    assert "fetched again" in capsys.readouterr().err
    assert cli.main(["job", "refetch", "no-such-job"]) == 1
    assert "No job no-such-job" in capsys.readouterr().err


def test_time_waiting_in_the_backends_queue_is_not_run_time(standin_app, standin_client):
    # A 1 s limit; the job waits a minute in the backend's queue first (a busy Slurm partition). Before, the
    # limit counted from the claim: TIMED-OUT at the first poll that saw it run, having run for no time at all.
    job_id = submit(standin_client, "remote", app="probe-limited", backend_options={"script": "forever"})
    runner = Runner(standin_app.config)
    assert runner.run(job_id) == "poll"                                    # queued
    backdate(standin_app, [job_id], 60, column="start_date")
    assert runner.poll_once(job_id) == "poll"                              # seen running now: not timed out
    assert job_row(standin_app, job_id)[0]["state"] == "RUNNING"
    backdate(standin_app, [job_id], 2, column="run_date")                  # ran 2 s against a 1 s limit
    assert runner.poll_once(job_id) == "TIMED-OUT"


def test_an_in_slot_job_whose_outputs_could_not_be_copied_out_keeps_its_copy_and_names_it(standin_app,
                                                                                          standin_client):
    settings = {**standin_app.config, "FETCH_ATTEMPTS": 1}
    job_id = submit(standin_client, "fetchfail")
    assert Runner(settings).run(job_id) == "FAILURE"
    ran, = standins.jobs_of(job_id)
    assert "cleanup" not in ran.calls                            # a container would still be there, not removed
    row, _events = job_row(standin_app, job_id)
    assert "fetching outputs failed" in row["status"] and "copy of the job is kept" in row["status"]
    assert row["extra"]["kept_remote"]["backend"] == "fetchfail"
