"""TES ListTasks on SQLite and PostgreSQL: name_prefix and tag filters are SQL, a MINIMAL listing never reads the
task documents, and task documents have a lower size cap (TES_MAX_TASK_BYTES, 2 MiB)."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import event

from caesar_rest import create_app
from caesar_rest.auth import hash_token
from caesar_rest.db import dispose_all, engine_for

from ..support import embedded_settings

TES = "/ga4gh/tes/v1"


@pytest.fixture(params=["sqlite", "postgresql"])
def tes_client(request, tmp_path):
    """A client of a user of its own (the PostgreSQL database is shared by the whole session)."""
    user, token = f"u{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    extra = {"DATABASE_URL": request.getfixturevalue("pg_url")} if request.param == "postgresql" else {}
    app = create_app(embedded_settings(tmp_path / "var", TES_HOST_RUNTIME=True, AUTH_MODE="token",
                                       AUTH_USERS={user: {"tokens_sha256": [hash_token(token)]}}, **extra))
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    yield app, client
    dispose_all()


def _create(client, name: str | None = None, tags: dict | None = None, content: str | None = None) -> str:
    task: dict = {"executors": [{"image": "alpine", "command": ["true"]}]}
    if name is not None:
        task["name"] = name
    if tags is not None:
        task["tags"] = tags
    if content is not None:
        task["inputs"] = [{"path": "/data/in.txt", "content": content}]
    answer = client.post(f"{TES}/tasks", json=task)
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["id"]


def _ids(client, query: str) -> list[str]:
    answer = client.get(f"{TES}/tasks?{query}")
    assert answer.status_code == 200, answer.get_json()
    return [t["id"] for t in answer.get_json()["tasks"]]


class Statements:
    """The SELECTs on jobs a block of code runs, with the columns each answered."""

    def __init__(self, app) -> None:
        self.engine = engine_for(app.config["DATABASE_URL"])
        self.seen: list[tuple[str, list[str]]] = []

    def _record(self, _conn, cursor, statement, _params, _context, _many) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM jobs" in statement:
            self.seen.append((statement, [d[0] for d in cursor.description or []]))

    def __enter__(self) -> Statements:
        event.listen(self.engine, "after_cursor_execute", self._record)
        return self

    def __exit__(self, *_exc) -> None:
        event.remove(self.engine, "after_cursor_execute", self._record)


def test_name_prefix_and_tags_filter_exactly(tes_client):
    """Case-sensitive prefixes with LIKE's wildcards taken literally, tags with quotes, '' meaning any value."""
    _app, client = tes_client
    first = _create(client, "Align-%_1", {"sample": 'a"b', "run": "1"})
    lower = _create(client, "align-lower", {"sample": "x"})
    underscore = _create(client, "Align_x")
    unnamed = _create(client, None, {"sample": ""})
    omega = _create(client, "Ωmega", {"κ": "λ"})
    assert _ids(client, "name_prefix=Align") == [underscore, first]
    assert _ids(client, "name_prefix=Align-%25") == [first]
    assert _ids(client, "name_prefix=Align_") == [underscore]
    assert _ids(client, "name_prefix=%CE%A9") == [omega]
    assert _ids(client, "tag_key=sample") == [unnamed, lower, first]
    assert _ids(client, "tag_key=sample&tag_value=a%22b") == [first]
    assert _ids(client, "tag_key=sample&tag_value=") == [unnamed, lower, first]
    assert _ids(client, "tag_key=sample&tag_key=run&tag_value=&tag_value=1") == [first]
    assert _ids(client, "tag_key=%CE%BA&tag_value=%CE%BB") == [omega]
    assert _ids(client, "tag_key=missing") == []
    assert _ids(client, "name_prefix=Align&tag_key=run") == [first]
    assert _ids(client, "state=QUEUED&name_prefix=align") == [lower]
    assert _ids(client, "state=COMPLETE") == []


def test_a_minimal_listing_reads_no_documents_and_filters_in_sql(tes_client):
    """The old code loaded every candidate's whole document (job.extra) in every view, and filtered name_prefix in
    Python over batches of 200 rows: here one query of five small columns answers."""
    app, client = tes_client
    big = "x" * (900 * 1024)
    needle = _create(client, "needle", content=big)
    for i in range(205):
        _create(client, f"hay-{i}", content=big if i < 3 else None)
    with Statements(app) as sql:
        assert _ids(client, "view=MINIMAL&name_prefix=needle&page_size=1") == [needle]
    assert len(sql.seen) == 1, [s for s, _cols in sql.seen]
    _statement, columns = sql.seen[0]
    assert "extra" not in columns, columns
    with Statements(app) as sql:
        page = client.get(f"{TES}/tasks?view=MINIMAL&page_size=4").get_json()
    assert [sorted(t) for t in page["tasks"]] == [["id", "state"]] * 4 and page["next_page_token"]
    assert all("extra" not in columns for _s, columns in sql.seen), sql.seen
    # BASIC needs the documents, and has them (inputs without their content).
    basic = client.get(f"{TES}/tasks?view=BASIC&name_prefix=needle").get_json()["tasks"]
    assert basic[0]["name"] == "needle" and "content" not in basic[0]["inputs"][0]


def test_task_documents_are_capped_at_two_mib(tes_client):
    """Three inputs each under the content cap (1 MiB) make a 2.7 MiB document: the old cap (16 MiB) took it."""
    app, client = tes_client
    task = {"executors": [{"image": "alpine", "command": ["true"]}],
            "inputs": [{"path": f"/data/in{i}.txt", "content": "y" * (900 * 1024)} for i in range(3)]}
    answer = client.post(f"{TES}/tasks", json=task)
    assert answer.status_code == 413, answer.get_json()
    assert "TES_MAX_TASK_BYTES" in answer.get_json()["message"]
    assert _ids(client, "view=MINIMAL") == []
    assert app.config["TES_MAX_TASK_BYTES"] == 2 * 1024 * 1024


def test_states_are_filtered_and_shown_in_sql(tes_client):
    """The TES state of a failed task depends on extra["tes_error"]: read by the database (only for FAILURE rows)."""
    from sqlalchemy import update

    from caesar_rest.db import session_scope
    from caesar_rest.models import Job

    app, client = tes_client
    ids = {name: _create(client, name) for name in ("executor", "system", "timeout", "canceling", "queued")}
    with session_scope(app.config["DATABASE_URL"]) as s:
        for name, values in (("executor", {"state": "FAILURE"}), ("system", {"state": "FAILURE"}),
                             ("timeout", {"state": "TIMED-OUT"}), ("canceling", {"cancel_requested": True})):
            s.execute(update(Job).where(Job.id == ids[name]).values(**values))
        job = s.get(Job, ids["executor"])
        job.extra = {**job.extra, "tes_error": "executor"}
    expected = {"executor": "EXECUTOR_ERROR", "system": "SYSTEM_ERROR", "timeout": "EXECUTOR_ERROR",
                "canceling": "CANCELING", "queued": "QUEUED"}
    shown = {t["id"]: t["state"] for t in client.get(f"{TES}/tasks?view=MINIMAL").get_json()["tasks"]}
    assert shown == {ids[name]: state for name, state in expected.items()}
    for state in ("EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELING", "QUEUED", "RUNNING"):
        assert sorted(_ids(client, f"state={state}")) == sorted(ids[n] for n, s in expected.items() if s == state)


def test_a_lone_surrogate_is_a_400_not_a_database_error(tes_client):
    """'\\ud800' alone is valid JSON but no text: a job's tag with one was a 500 at the INSERT on the old code (the
    databases store text as UTF-8), and a TES name with one now has a column of its own."""
    _app, client = tes_client
    job = client.post("/caesar/api/v1.0/job", content_type="application/json",
                      data=b'{"app": "sleeper", "tag": "x\\udfff", "job_inputs": {"seconds": 1}}')
    assert job.status_code == 400 and "surrogate" in job.get_json()["message"], job.get_data(as_text=True)
    for raw in (b'{"name": "a\\ud800", "executors": [{"image": "a", "command": ["true"]}]}',
                b'{"executors": [{"image": "a", "command": ["true"]}], "tags": {"k": "\\uDFFFx"}}'):
        answer = client.post(f"{TES}/tasks", data=raw, content_type="application/json")
        assert answer.status_code == 400 and "surrogate" in answer.get_json()["message"], answer.get_json()
    paired = b'{"name": "\\ud83d\\ude00", "executors": [{"image": "a", "command": ["true"]}]}'
    assert client.post(f"{TES}/tasks", data=paired, content_type="application/json").status_code == 200
    assert _ids(client, "name_prefix=%F0%9F%98%80") != []
