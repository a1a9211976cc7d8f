"""Numbers from users are parsed strictly (caesar_rest.numbers): superscripts, other scripts' digits, underscores,
1e400, NaN and integers wider than 64 bits are a 400 naming the field, and nothing is created. Through the Flask
test client: parsing does not depend on the server."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from caesar_rest.db import session_scope
from caesar_rest.models import Job

from ..support import API, embedded_settings

TES = "/ga4gh/tes/v1"


@pytest.fixture
def settings(tmp_path):
    """TES tasks on the host runtime (the local backend): nothing here runs them, they only have to be accepted."""
    return embedded_settings(tmp_path / "var", TES_HOST_RUNTIME=True)


def _task(**resources) -> dict:
    return {"executors": [{"image": "alpine", "command": ["true"]}], "resources": resources}


def _jobs(app) -> int:
    with session_scope(app.config["DATABASE_URL"]) as s:
        return s.scalar(select(func.count()).select_from(Job))


@pytest.mark.parametrize("value", ["²", "1e400", "٣", "1_0", " 5", "+5 ", "5.0", "0x10", "", "9" * 30, "0"])
def test_tes_time_limit_must_be_plain_digits(app, client, value):
    """backend_parameters are strings; "²" passed str.isdigit() and then failed int(): a 500 on the old code.
    "٣" (Arabic-Indic three) and "1_0" were taken as 3 and 10."""
    answer = client.post(f"{TES}/tasks", json=_task(backend_parameters={"time_limit": value}))
    assert answer.status_code == 400, answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["field"] == "resources.backend_parameters.time_limit", body
    assert "time_limit" in body["message"]
    assert _jobs(app) == 0


def test_tes_resource_numbers(app, client):
    for resources, field in (({"cpu_cores": 10**30}, "resources.cpu_cores"),
                             ({"cpu_cores": True}, "resources.cpu_cores"),
                             ({"disk_gb": 1e300}, "resources.disk_gb"),
                             ({"ram_gb": -1}, "resources.ram_gb")):
        answer = client.post(f"{TES}/tasks", json=_task(**resources))
        assert answer.status_code == 400, (resources, answer.get_data(as_text=True))
        assert answer.get_json()["field"] == field
    # 1e400 as a client writes it (json.dumps would send Infinity, which is not JSON and refused as such).
    raw = b'{"executors": [{"image": "a", "command": ["true"]}], "resources": {"ram_gb": 1e400}}'
    answer = client.post(f"{TES}/tasks", data=raw, content_type="application/json")
    assert answer.status_code == 400 and answer.get_json()["field"] == "resources.ram_gb", answer.get_json()
    assert _jobs(app) == 0
    ok = client.post(f"{TES}/tasks", json=_task(cpu_cores=2, ram_gb=0.5, backend_parameters={"time_limit": "60"}))
    assert ok.status_code == 200, ok.get_json()


def test_app_options_refuse_huge_and_infinite_numbers(app, client):
    """An int option without a max took a 30-digit integer into the job's argv on the old code."""
    for raw in (b'{"app": "sleeper", "job_inputs": {"seconds": 1000000000000000000000000000000}}',
                b'{"app": "sleeper", "job_inputs": {"seconds": 1e400}}',
                b'{"app": "sleeper", "job_inputs": {"seconds": true}}'):
        answer = client.post(f"{API}/job", data=raw, content_type="application/json")
        assert answer.status_code == 400, answer.get_data(as_text=True)
        assert answer.get_json()["option"] == "seconds", answer.get_json()
    assert _jobs(app) == 0


@pytest.mark.parametrize("path, name", [("/jobs?per_page=٣", "per_page"), ("/jobs?page=²", "page"),
                                        ("/jobs?per_page=1_0", "per_page"), ("/jobs?page=%201", "page"),
                                        ("/jobs?page=1e3", "page"), (f"{TES}/tasks?page_size=٣", "page_size")])
def test_query_numbers_are_ascii_digits(client, path, name):
    """int() took "٣" as 3 and " 1" or "1_0" as numbers: the old code answered 200."""
    answer = client.get(path if path.startswith(TES) else API + path)
    assert answer.status_code == 400, answer.get_data(as_text=True)
    assert answer.get_json()["parameter"] == name and name in answer.get_json()["message"]


def test_logs_tail_is_strict(app, client):
    job_id = client.post(f"{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 1}}).get_json()["job_id"]
    for tail in ("\u0661", "1_0", "1e2"):              # ARABIC-INDIC DIGIT ONE: int() takes it, the API must not
        answer = client.get(f"{API}/job/{job_id}/logs?tail={tail}")
        assert answer.status_code == 400 and answer.get_json()["parameter"] == "tail", (tail, answer.get_json())
    assert client.get(f"{API}/job/{job_id}/logs?tail=5").status_code == 200
