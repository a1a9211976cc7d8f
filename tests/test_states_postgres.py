"""The state table's walk (tests/unit/test_states.py) again on PostgreSQL, where a new job's row and its first event
are written by one statement (a data-modifying CTE, caesar_rest/states.py): every transition's event comes exactly
when the row moves, none when another actor got there first. Plus a claim of a job with inputs and TES tags,
whose row, inputs and tags are three statements there."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from caesar_rest import create_app
from caesar_rest.db import dispose_all, session_scope
from caesar_rest.models import JobEvent, JobInput, TesTag
from caesar_rest.states import PENDING, RUNNING, STARTED, SUCCESS, NewJob, claim, insert_job, transition

from .support import create_pg_database, drop_pg_database, embedded_settings
from .unit import test_states as walked

test_every_edge_of_the_table_works_and_every_other_is_refused = \
    walked.test_every_edge_of_the_table_works_and_every_other_is_refused
test_a_job_is_claimed_once = walked.test_a_job_is_claimed_once


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    database = create_pg_database()
    app = create_app(embedded_settings(tmp_path_factory.mktemp("states-pg") / "var", DATABASE_URL=database))
    assert app.config["DATABASE_URL"].startswith("postgresql")
    yield database
    dispose_all()
    drop_pg_database(database)


def test_a_job_with_inputs_and_tags_is_inserted_claimed_and_ended_with_one_event_each(url):
    inputs = [{"file_uuid": "a" * 32, "option": "--in", "relpath": "inputs/a.fits", "sha256": "0" * 64,
               "size_bytes": 10, "crc64nvme": None}]
    with session_scope(url) as s:
        job = insert_job(s, NewJob(owner="u", kind="tes", app="tes", app_version="1", backend="local",
                                   workdir_root="/nonexistent", argv=[], spec={"env": {}}, inputs=inputs,
                                   tags={"WORKFLOW_ID": "w1"}, name="task", event="Task created"))
    with session_scope(url) as s:
        held = claim(s, job.id, "host-a", "took it", {"worker_pid": 7})
        assert held is not None and held.job.state == STARTED and held.job.tes_name == "task"
        assert [(i.file_uuid, i.option, i.relpath) for i in held.inputs] == [("a" * 32, "--in", "inputs/a.fits")]
        assert s.scalars(select(TesTag.value).where(TesTag.job_id == job.id)).all() == ["w1"]
        assert s.scalar(select(JobInput.size_bytes).where(JobInput.job_id == job.id)) == 10
    with session_scope(url) as s:
        assert transition(s, job.id, RUNNING, "runs", from_states=(STARTED,), pid=42) is True
        assert transition(s, job.id, RUNNING, "again", from_states=(STARTED,)) is False     # moved already
    with session_scope(url) as s:
        assert transition(s, job.id, SUCCESS, "done", exit_status=0) is True
        assert transition(s, job.id, SUCCESS, "twice", exit_status=0) is False
    with session_scope(url) as s:
        events = s.execute(select(JobEvent.state, JobEvent.message).where(JobEvent.job_id == job.id)
                           .order_by(JobEvent.id)).all()
    assert [tuple(e) for e in events] == [(PENDING, "Task created"), (STARTED, "took it"), (RUNNING, "runs"),
                                          (SUCCESS, "done")]
