"""The state table, walked: every legal edge works through transition(), every other edge is refused and changes
nothing. On the embedded SQLite database (no external service)."""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from sqlalchemy import select, update

from caesar_rest import create_app
from caesar_rest.db import dispose_all, session_scope
from caesar_rest.models import Job, JobEvent
from caesar_rest.states import (
    ACTIVE_STATES,
    ALL_STATES,
    PENDING,
    STARTED,
    TERMINAL_STATES,
    TRANSITIONS,
    IllegalTransition,
    JobState,
    NewJob,
    claim,
    insert_job,
    sources,
    transition,
)

from ..support import embedded_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    app = create_app(embedded_settings(tmp_path_factory.mktemp("states") / "var"))
    yield app.config["DATABASE_URL"]
    dispose_all()


def job_in(url: str, state: JobState) -> str:
    """A job row put in `state` directly (test set-up: the one write of a state outside transition())."""
    with session_scope(url) as s:
        job = insert_job(s, NewJob(owner="u", kind="app", app="a", app_version="1", backend="local",
                                   workdir_root="/nonexistent", argv=["true"], spec={}))
        s.execute(update(Job).where(Job.id == job.id).values(state=state.value))
    return job.id


def state_and_events(url: str, job_id: str) -> tuple[str, list[str]]:
    with session_scope(url) as s:
        state = s.scalar(select(Job.state).where(Job.id == job_id))
        events = list(s.scalars(select(JobEvent.state).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))
    return state, events


@pytest.mark.parametrize("src,dst", list(itertools.product(ALL_STATES, ALL_STATES)), ids=str)
def test_every_edge_of_the_table_works_and_every_other_is_refused(url, src, dst):
    job_id = job_in(url, src)
    if (src, dst) in TRANSITIONS:
        with session_scope(url) as s:
            assert transition(s, job_id, dst, f"{src} -> {dst}", from_states=(src,)) is True
        state, events = state_and_events(url, job_id)
        assert state == dst and events == [PENDING, dst]
        with session_scope(url) as s:
            end = s.scalar(select(Job.end_date).where(Job.id == job_id))
        assert (end is not None) == (dst in TERMINAL_STATES)
    else:
        with session_scope(url) as s, pytest.raises(IllegalTransition, match=f"{src} -> {dst}"):
            transition(s, job_id, dst, "refused", from_states=(src,))
        with session_scope(url) as s:           # by default, from every state the table allows: not this one
            assert transition(s, job_id, dst, "refused") is False
        assert state_and_events(url, job_id) == (src, [PENDING])


def test_the_default_sources_are_the_table_s():
    for dst in ALL_STATES:
        assert set(sources(dst)) == {a for a, b in TRANSITIONS if b == dst}


def test_a_terminal_state_has_no_way_out_and_every_state_is_reachable():
    assert not [edge for edge in TRANSITIONS if edge[0] in TERMINAL_STATES]
    reached, frontier = {PENDING}, [PENDING]
    while frontier:
        here = frontier.pop()
        for a, b in TRANSITIONS:
            if a == here and b not in reached:
                reached.add(b)
                frontier.append(b)
    assert reached == set(ALL_STATES)
    assert all(isinstance(why, str) and len(why) > 20 for why in TRANSITIONS.values())


def test_a_job_is_claimed_once(url):
    job_id = job_in(url, PENDING)
    with session_scope(url) as s:
        held = claim(s, job_id, "host-a", "took it", {"worker_pid": 123})
    assert held is not None and held.id == job_id and held.job.state == STARTED and held.job.attempts == 1
    assert held.job.extra["worker_pid"] == 123 and held.inputs == []
    with session_scope(url) as s:
        assert claim(s, job_id, "host-b", "took it again", {"worker_pid": 456}) is None
    assert state_and_events(url, job_id) == (STARTED, [PENDING, STARTED])


def test_states_compare_and_store_as_their_names():
    assert JobState.TIMED_OUT == "TIMED-OUT" and f"{JobState.TIMED_OUT}" == "TIMED-OUT"
    assert ACTIVE_STATES + TERMINAL_STATES == ALL_STATES


WRITES_STATE = re.compile(r"(\.values\([^)]*\bstate\s*=|\bjob\.state\s*=[^=]|\"state\":\s*[A-Z])")


def test_nothing_but_the_state_machine_writes_a_job_s_state():
    """transition() is the only writer of jobs.state (insert_job writes PENDING into new rows)."""
    writers = []
    for path in sorted((REPO / "caesar_rest").rglob("*.py")) + sorted((REPO / "workers").rglob("*.py")):
        if path.name == "states.py" or "migrations" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if WRITES_STATE.search(line):
                writers.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not writers, writers
