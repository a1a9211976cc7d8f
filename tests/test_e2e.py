"""End to end over real HTTP with a real worker process, on the embedded default and on
RabbitMQ + Redis + PostgreSQL: the seed README's curl examples, cancel, and a worker killed mid-job."""
from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from workers.backends.local import process_alive

from .support import (
    API,
    create_pg_database,
    drop_pg_database,
    embedded_settings,
    http_status,
    production_settings,
    seed_walkthrough,
    start_api,
    start_worker,
    wait_state,
)


@pytest.fixture(scope="module", params=["embedded", "production"])
def stack(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    db_url = None
    if request.param == "embedded":
        settings = embedded_settings(root / "var")
    else:
        db_url = create_pg_database()
        settings = production_settings(root / "var", db_url)
    settings["STALE_AFTER"] = 20
    api, base = start_api(settings, root / "api.log")
    worker = start_worker(settings, ["local"], root / "worker.log", concurrency=2, beat=True)
    state = {"settings": settings, "base": base, "api": api, "worker": worker, "root": root, "name": request.param}
    yield state
    state["worker"].stop()
    api.stop()
    if db_url:
        drop_pg_database(db_url)


def test_seed_curl_examples_work_as_written(stack, tmp_path):
    seen = seed_walkthrough(stack["base"].replace("127.0.0.1", "localhost"), tmp_path)
    status = seen["status"]
    assert float(status["elapsed_time"]) > 0 and status["pid"]
    assert {"VGPS_cont_MOS017_sources.reg", "VGPS_cont_MOS017_preview.png", "stderr.log"} <= seen["names"]


def test_cancel_over_http_stops_a_running_job(stack):
    base = stack["base"]
    job = requests.post(f"{base}{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 120}}).json()
    wait_state(http_status(base), job["job_id"], ["RUNNING"], timeout=60)
    t0 = time.monotonic()
    r = requests.post(f"{base}{API}/job/{job['job_id']}/cancel")
    assert r.status_code == 200
    st = wait_state(http_status(base), job["job_id"], ["CANCELED"], timeout=10)
    assert time.monotonic() - t0 < 3 and st["status"] == "Job canceled by user"
    listed = requests.get(f"{base}{API}/jobs", params={"state": "CANCELED"}).json()
    assert job["job_id"] in [j["job_id"] for j in listed["jobs"]]


def test_many_jobs_all_finish_once(stack):
    base = stack["base"]
    ids = [requests.post(f"{base}{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 0, "message": f"m{i}"}}
                         ).json()["job_id"] for i in range(12)]
    for job_id in ids:
        st = wait_state(http_status(base), job_id, timeout=120)
        assert st["state"] == "SUCCESS", st
        meta = requests.get(f"{base}{API}/job/{job_id}/metadata").json()
        assert meta["attempts"] == 1


def test_worker_killed_mid_job_ends_the_job_with_a_reason(stack):
    base, settings = stack["base"], stack["settings"]
    job = requests.post(f"{base}{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 300}}).json()
    st = wait_state(http_status(base), job["job_id"], ["RUNNING"], timeout=60)
    app_pid = int(st["pid"])
    os.killpg(stack["worker"].pid, signal.SIGKILL)       # the worker and its pool, no goodbye
    stack["worker"].stop()
    stack["worker"] = start_worker(settings, ["local"], stack["root"] / "worker2.log", concurrency=2, beat=True)
    st = wait_state(http_status(base), job["job_id"], ["FAILURE"], timeout=90)
    assert "lost" in st["status"] and "worker" in st["status"]
    deadline = time.time() + 10
    while process_alive(app_pid) and time.time() < deadline:     # dead, or a zombie nobody reaps
        time.sleep(0.1)
    assert not process_alive(app_pid)
    # the new worker still serves
    ok = requests.post(f"{base}{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 0}}).json()
    assert wait_state(http_status(base), ok["job_id"], timeout=60)["state"] == "SUCCESS"
