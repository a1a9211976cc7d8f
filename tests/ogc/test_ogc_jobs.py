"""/ogcapi/jobs on real API and worker processes: dismiss of a running job (its process killed, the job dismissed),
the job list's filters and keyset paging, and another user's job answering no-such-job."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ..support import API, job_processes, wait_until
from .ogc_support import wait_status

EXC = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"
ASYNC = {"Prefer": "respond-async"}


def _start(session, ogc, process="sleeper", **inputs) -> str:
    r = session.post(f"{ogc}/processes/{process}/execution", json={"inputs": inputs}, headers=ASYNC, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["jobID"]


def test_dismiss_of_a_running_job_kills_its_process(ogc_stack, alice, schemas):
    ogc, base = ogc_stack["ogc"], ogc_stack["base"]
    job_id = _start(alice, ogc, seconds=300)
    wait_status(alice, ogc, job_id, ["running"], timeout=60)
    wait_until(lambda: job_processes(job_id), 30, "the sleeper's process")
    early = alice.get(f"{ogc}/jobs/{job_id}/results", timeout=10)
    assert early.status_code == 404 and early.json()["type"] == EXC + "result-not-ready"
    r = alice.delete(f"{ogc}/jobs/{job_id}", timeout=30)
    assert r.status_code == 200, r.text
    schemas.validate(r.json(), "statusInfo")
    assert r.json()["status"] == "dismissed"
    wait_until(lambda: not job_processes(job_id), 10, "the job's processes gone")
    assert alice.get(f"{base}{API}/job/{job_id}/status", timeout=10).json()["state"] == "CANCELED"
    assert wait_status(alice, ogc, job_id)["status"] == "dismissed"
    gone = alice.get(f"{ogc}/jobs/{job_id}/results", timeout=10)
    assert gone.status_code == 404 and gone.json()["type"] == EXC + "no-such-job"
    listed = alice.get(f"{ogc}/jobs", params={"status": "dismissed", "limit": 1000}, timeout=10).json()
    assert job_id in [j["jobID"] for j in listed["jobs"]]


def test_dismiss_of_a_finished_job(ogc_stack, alice):
    ogc = ogc_stack["ogc"]
    job_id = _start(alice, ogc, seconds=0)
    assert wait_status(alice, ogc, job_id)["status"] == "successful"
    assert alice.delete(f"{ogc}/jobs/{job_id}", timeout=10).json()["status"] == "dismissed"
    info = alice.get(f"{ogc}/jobs/{job_id}", timeout=10).json()
    assert info["status"] == "dismissed" and info["message"].startswith("Dismissed after it had ended SUCCESS")
    assert alice.get(f"{ogc}/jobs/{job_id}/results", timeout=10).json()["type"] == EXC + "no-such-job"
    ok = alice.get(f"{ogc}/jobs", params={"status": "successful", "limit": 1000}, timeout=10).json()
    assert job_id not in [j["jobID"] for j in ok["jobs"]]


def _all_pages(session, url, params) -> tuple[list[str], int]:
    ids, pages = [], 0
    r = session.get(url, params=params, timeout=10)
    while True:
        assert r.status_code == 200, r.text
        doc = r.json()
        pages += 1
        ids += [j["jobID"] for j in doc["jobs"]]
        nxt = [link["href"] for link in doc["links"] if link["rel"] == "next"]
        if not nxt:
            return ids, pages
        r = session.get(nxt[0], timeout=10)


def test_job_list_filters_and_paging(ogc_stack, bob, schemas):
    """bob's jobs only (the other tests run as alice): three quick sleepers, one failing, one of 2 s."""
    ogc = ogc_stack["ogc"]
    since = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    quick = [_start(bob, ogc, seconds=0) for _ in range(3)]
    failing = _start(bob, ogc, **{"exit-code": 4})
    slow = _start(bob, ogc, seconds=2)
    other = _start(bob, ogc, "long-sleeper")
    mine = [*quick, failing, slow, other]
    for job_id in mine:
        wait_status(bob, ogc, job_id)
    first = bob.get(f"{ogc}/jobs", params={"limit": 2}, timeout=10).json()
    schemas.validate(first, "jobList")
    for info in first["jobs"]:
        schemas.validate(info, "statusInfo")
    ids, pages = _all_pages(bob, f"{ogc}/jobs", {"limit": 2})
    assert ids == list(reversed(mine)) and pages == 3               # newest first, each once
    assert _all_pages(bob, f"{ogc}/jobs", {"limit": 2, "processID": "sleeper"})[0] == list(reversed(mine[:-1]))
    assert _all_pages(bob, f"{ogc}/jobs", {"processID": "long-sleeper"})[0] == [other]
    assert _all_pages(bob, f"{ogc}/jobs", {"status": "failed"})[0] == [failing]
    assert set(_all_pages(bob, f"{ogc}/jobs", {"status": "successful,failed", "type": "process"})[0]) == set(mine)
    assert _all_pages(bob, f"{ogc}/jobs", {"minDuration": 2})[0] == [slow]
    assert slow not in _all_pages(bob, f"{ogc}/jobs", {"maxDuration": 1})[0]
    # minDuration and maxDuration are arrays (the standard's): every value given must hold.
    assert _all_pages(bob, f"{ogc}/jobs", {"minDuration": [0, 2]})[0] == [slow]
    assert _all_pages(bob, f"{ogc}/jobs", {"minDuration": 2, "maxDuration": [3600, 1]})[0] == []
    assert set(_all_pages(bob, f"{ogc}/jobs", {"datetime": f"{since}/.."})[0]) == set(mine)
    assert _all_pages(bob, f"{ogc}/jobs", {"datetime": f"../{since}"})[0] == []
    for bad in ({"status": "sleeping"}, {"type": "tes"}, {"limit": 0}, {"minDuration": "x"},
                {"minDuration": 2**31}, {"datetime": "yesterday"}, {"datetime": ""},
                {"datetime": "2026-02-29T00:00:00Z"}, {"datetime": since.rstrip("Z")}):   # RFC 3339: a zone
        r = bob.get(f"{ogc}/jobs", params=bad, timeout=10)
        assert r.status_code == 400, (bad, r.text)
        schemas.validate(r.json(), "exception")


def test_another_users_job_is_no_such_job(ogc_stack, alice, bob, admin):
    ogc = ogc_stack["ogc"]
    job_id = _start(alice, ogc, seconds=0)
    wait_status(alice, ogc, job_id)
    for method, path in (("GET", ""), ("GET", "/results"), ("GET", "/results/sleeper"), ("DELETE", "")):
        r = bob.request(method, f"{ogc}/jobs/{job_id}{path}", timeout=10)
        assert r.status_code == 404 and r.json()["type"] == EXC + "no-such-job", (method, path, r.text)
    assert job_id not in [j["jobID"] for j in bob.get(f"{ogc}/jobs", params={"limit": 1000}).json()["jobs"]]
    seen = admin.get(f"{ogc}/jobs", params={"limit": 1000}, timeout=10).json()
    assert job_id in [j["jobID"] for j in seen["jobs"]]
    assert admin.get(f"{ogc}/jobs/{job_id}", timeout=10).json()["status"] == "successful"
    assert bob.get(f"{ogc}/jobs/not-a-job", timeout=10).json()["type"] == EXC + "no-such-job"


@pytest.mark.parametrize("path", ["/", "/processes", "/jobs"])
def test_no_credentials_is_an_ogc_exception(ogc_stack, path):
    import requests

    r = requests.get(ogc_stack["ogc"] + path, timeout=10)
    assert r.status_code == 401 and r.json()["status"] == 401 and r.headers["WWW-Authenticate"]
