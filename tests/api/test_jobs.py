"""Jobs through the API with the runner executing them in-process on the real local backend."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import threading
import time
from pathlib import Path

import pytest

from caesar_rest.db import session_scope
from caesar_rest.models import Job
from workers.runner import Runner, reap

from ..support import API, client_status, job_processes, run_watching_the_end, upload, wait_state

REPO = Path(__file__).resolve().parents[2]

TEST_APPS = {
    "quick.yml": "name: quick\nversion: '1'\ncommand: [caesar-sleeper]\nresources: {time_limit: 1}\n"
                 "options:\n  seconds: {type: float, default: 0}\n",
    "family.yml": "name: family\nversion: '1'\n"
                  "command: [python3, -c, 'import subprocess,time; "
                  "subprocess.Popen([\"sleep\",\"300\"]); time.sleep(300)']\n",
    "hungry.yml": "name: hungry\nversion: '1'\ncommand: [caesar-sleeper, --seconds, '0']\n"
                  "resources: {memory_mb: 400}\noptions:\n  allocate-mb: {type: int, default: 0}\n",
}


@pytest.fixture
def settings(tmp_path):
    apps = tmp_path / "apps"
    shutil.copytree(REPO / "config" / "apps", apps)
    for name, text in TEST_APPS.items():
        (apps / name).write_text(text)
    return {"ROOT": str(tmp_path / "var"), "APPS_DIR": str(apps), "JOB_POLL_INTERVAL": 0.05}


def submit(client, app, **inputs):
    r = client.post(f"{API}/job", json={"app": app, "job_inputs": inputs})
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def run(app, job_id):
    return Runner(app.config).run(job_id)


def test_submit_answers_like_the_seed(client):
    rec = upload(client, b"SIMPLE", "VGPS.fits")
    inputs = {"inputfile": rec["path"], "run": True, "no-logredir": True, "envfile": "/home/riggi/Software/setvars.sh",
              "no-mpi": True, "no-nestedsearch": True, "no-extendedsearch": True}
    r = client.post(f"{API}/job", json={"app": "sfinder", "job_inputs": inputs})
    assert r.status_code == 202
    body = r.get_json()
    assert body["app"] == "sfinder" and body["state"] == "PENDING" and body["status"] == "Job submitted with success"
    assert body["job_inputs"]["envfile"] == "/home/riggi/Software/setvars.sh" and body["submit_date"]
    status = client.get(f"{API}/job/{body['job_id']}/status").get_json()
    assert status["state"] == "PENDING" and status["exit_status"] is None


def test_checksum_job_runs_to_success_with_logs_metadata_and_output(app, client):
    content = b"hello world\n" * 1000
    rec = upload(client, content, "greeting.txt")
    job_id = submit(client, "checksum", inputfile=rec["uuid"])
    assert run(app, job_id) == "SUCCESS"
    st = client.get(f"{API}/job/{job_id}/status").get_json()
    assert st["state"] == "SUCCESS" and st["exit_status"] == 0 and st["status"] == "Process terminated with success"
    assert float(st["elapsed_time"]) > 0 and int(st["pid"]) > 0
    logs = client.get(f"{API}/job/{job_id}/logs").get_json()
    assert rec["sha256"] in logs["stdout"] and logs["stderr"] == ""
    meta = client.get(f"{API}/job/{job_id}/metadata").get_json()
    assert meta["app_version"] == "1.0" and meta["argv"][0] == "caesar-checksum" and meta["backend"] == "local"
    assert meta["inputs"][0]["sha256"] == rec["sha256"] and meta["exit_status"] == 0 and meta["host"]
    assert [e["state"] for e in meta["events"]] == ["PENDING", "STARTED", "RUNNING", "SUCCESS"]
    assert meta["timings"]["finished"] >= meta["timings"]["running"] >= meta["timings"]["started"]
    r = client.get(f"{API}/job/{job_id}/output")
    assert r.status_code == 200 and r.headers["Content-Disposition"] == f'attachment; filename="job_{job_id}.tar.gz"'
    with tarfile.open(fileobj=io.BytesIO(r.data), mode="r:gz") as tar:
        names = set(tar.getnames())
        assert f"job_{job_id}/checksum.txt" in names and f"job_{job_id}/stdout.log" in names
        assert f"job_{job_id}/caesar_job.json" in names
        assert not any("/inputs" in n for n in names)          # inputs are the user's own data
        assert not any(n.endswith(".tar.gz") for n in names)
        line = tar.extractfile(f"job_{job_id}/checksum.txt").read().decode()
    assert line.split()[0] == rec["sha256"]


def test_the_tarball_is_whole_from_the_moment_the_job_is_finished(app, client):
    """A client that downloads as soon as it sees the end gets every output and caesar_job.json (which the worker
    writes only after recording the end: the download builds it from the database, and it says SUCCESS)."""
    rec = upload(client, b"whole\n", "w.txt")
    job_id = submit(client, "checksum", inputfile=rec["uuid"])
    state, _, files = run_watching_the_end(app, job_id)
    assert state == "SUCCESS"
    assert {"checksum.txt", "stdout.log", "stderr.log", "caesar_job.json"} <= set(files), sorted(files)
    assert files["checksum.txt"].split()[0].decode() == rec["sha256"]
    record = json.loads(files["caesar_job.json"])
    assert record["state"] == "SUCCESS" and record["job_id"] == job_id and record["outputs"]
    # the worker's own copy, written after, says the same; a download now gives it once
    workdir = Path(app.config["ROOT"]) / "jobs" / "anonymous" / job_id
    assert json.loads((workdir / "caesar_job.json").read_text())["state"] == "SUCCESS"
    assert not list(workdir.parent.glob(f".{job_id}*"))           # no half-written copy left behind
    with tarfile.open(fileobj=io.BytesIO(client.get(f"{API}/job/{job_id}/output").data), mode="r:gz") as tar:
        assert [n for n in tar.getnames() if n.endswith("caesar_job.json")] == [f"job_{job_id}/caesar_job.json"]


def test_failure_records_exit_status_and_stderr(app, client):
    job_id = submit(client, "sleeper", seconds=0, **{"exit-code": 3})
    assert run(app, job_id) == "FAILURE"
    st = client.get(f"{API}/job/{job_id}/status").get_json()
    assert st["exit_status"] == 3 and "status 3" in st["status"] and "exiting with status 3" in st["status"]


def test_time_limit_gives_timed_out(app, client):
    job_id = submit(client, "quick", seconds=30)
    start = time.monotonic()
    assert run(app, job_id) == "TIMED-OUT"
    assert time.monotonic() - start < 10
    st = client.get(f"{API}/job/{job_id}/status").get_json()
    assert st["state"] == "TIMED-OUT" and "time limit of 1 s" in st["status"]
    assert job_processes(job_id) == []


def test_memory_limit_fails_the_job(app, client):
    job_id = submit(client, "hungry", **{"allocate-mb": 1500})
    assert run(app, job_id) == "FAILURE"
    assert "memory" in client.get(f"{API}/job/{job_id}/status").get_json()["status"].lower()
    ok = submit(client, "hungry", **{"allocate-mb": 10})
    assert run(app, ok) == "SUCCESS"


def test_cancel_kills_the_whole_process_group_within_2s(app, client):
    job_id = submit(client, "family")
    thread = threading.Thread(target=run, args=(app, job_id))
    thread.start()
    wait_state(client_status(client), job_id, ["RUNNING"], timeout=30)
    deadline = time.time() + 10
    while len(job_processes(job_id)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(job_processes(job_id)) >= 2          # the app and its child
    t0 = time.monotonic()
    r = client.post(f"{API}/job/{job_id}/cancel")
    assert r.status_code == 200
    wait_state(client_status(client), job_id, ["CANCELED"], timeout=10)
    assert time.monotonic() - t0 < 2.0
    thread.join(10)
    assert job_processes(job_id) == []
    assert client.get(f"{API}/job/{job_id}/status").get_json()["status"] == "Job canceled by user"


def test_cancel_pending_job_never_runs(app, client):
    job_id = submit(client, "sleeper")
    r = client.get(f"{API}/job/{job_id}/cancel")
    assert r.status_code == 200 and r.get_json()["state"] == "CANCELED"
    assert run(app, job_id) == "CANCELED"            # a late delivery does nothing
    assert not (Path(app.config["JOBS_DIR"]) / "anonymous" / job_id / "stdout.log").exists()


def test_cancel_finished_job_is_409_and_changes_nothing(app, client):
    job_id = submit(client, "sleeper", seconds=0)
    run(app, job_id)
    r = client.post(f"{API}/job/{job_id}/cancel")
    assert r.status_code == 409 and "already finished" in r.get_json()["message"]
    assert client.get(f"{API}/job/{job_id}/status").get_json()["state"] == "SUCCESS"


def test_output_before_the_end_names_the_state(client):
    job_id = submit(client, "sleeper")
    r = client.get(f"{API}/job/{job_id}/output")
    assert r.status_code == 409 and r.get_json()["state"] == "PENDING" and "PENDING" in r.get_json()["message"]


def test_redelivered_finished_job_does_not_run_twice(app, client):
    job_id = submit(client, "sleeper", seconds=0, message="once")
    assert run(app, job_id) == "SUCCESS"
    assert run(app, job_id) == "SUCCESS"
    stdout = client.get(f"{API}/job/{job_id}/logs").get_json()["stdout"]
    assert stdout.count("once") == 1
    assert client.get(f"{API}/job/{job_id}/metadata").get_json()["attempts"] == 1


def test_job_of_a_dead_worker_is_ended_with_a_reason(app, client):
    job_id = submit(client, "sleeper")
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    import socket
    with session_scope(app.config["DATABASE_URL"]) as s:
        job = s.get(Job, job_id)
        job.state, job.host, job.extra = "RUNNING", socket.gethostname(), {"worker_pid": dead.pid}
    result = reap(app.config, publish=lambda *a: None, follow=lambda *a: None)
    assert result["lost"] == 1
    st = client.get(f"{API}/job/{job_id}/status").get_json()
    assert st["state"] == "FAILURE" and "lost" in st["status"] and "worker" in st["status"]


def test_stale_pending_job_is_published_again(app, client):
    job_id = submit(client, "sleeper")
    published = []
    reap({**app.config, "PENDING_REPUBLISH_AFTER": 0}, publish=lambda j, b: published.append((j, b)),
         follow=lambda *a: None)
    assert published == [(job_id, "local")]


def test_jobs_list_paginates_and_filters(app, client):
    ids = [submit(client, "sleeper", seconds=0) for _ in range(5)]
    run(app, ids[0])
    client.post(f"{API}/job", json={"app": "sleeper", "tag": "mine"})
    page = client.get(f"{API}/jobs?per_page=2&page=2").get_json()
    assert page["total"] == 6 and page["pages"] == 3 and len(page["jobs"]) == 2
    assert [j["job_id"] for j in client.get(f"{API}/jobs?state=SUCCESS").get_json()["jobs"]] == [ids[0]]
    assert len(client.get(f"{API}/jobs?state=PENDING,SUCCESS").get_json()["jobs"]) == 6
    assert len(client.get(f"{API}/jobs?tag=mine").get_json()["jobs"]) == 1
    assert client.get(f"{API}/jobs?app=checksum").get_json()["total"] == 0
    assert client.get(f"{API}/jobs?state=BOGUS").status_code == 400
    assert client.get(f"{API}/jobs?per_page=0").status_code == 400


def test_jobs_list_counts_up_to_its_limit(app, client):
    ids = [submit(client, "sleeper", seconds=0) for _ in range(7)]
    app.config["JOBS_COUNT_LIMIT"] = 4
    first = client.get(f"{API}/jobs?per_page=3").get_json()
    assert first["total"] is None and first["pages"] is None and first["total_exceeds"] == 4
    assert first["has_next"] is True and [j["job_id"] for j in first["jobs"]] == ids[::-1][:3]
    last = client.get(f"{API}/jobs?per_page=3&page=3").get_json()      # the last page knows the total
    assert (last["total"], last["pages"], last["has_next"], len(last["jobs"])) == (7, 3, False, 1)
    past = client.get(f"{API}/jobs?per_page=3&page=9").get_json()
    assert past["jobs"] == [] and past["total"] is None and past["has_next"] is False
    assert client.get(f"{API}/jobs?per_page=3&state=SUCCESS").get_json()["total"] == 0
    app.config["JOBS_COUNT_LIMIT"] = 0                      # 0: always the exact count
    assert client.get(f"{API}/jobs?per_page=3").get_json()["total"] == 7


def test_jobs_list_walks_by_page_token(app, client):
    """Tokens walk every job once, newest first; jobs submitted meanwhile do not shift the pages (page numbers
    would repeat a job); filters hold; a bad token, or a page number with it, is a 400 naming the parameter."""
    ids = [submit(client, "sleeper", seconds=0) for _ in range(7)]
    client.post(f"{API}/job", json={"app": "sleeper", "tag": "other"})
    seen, token, pages = [], None, 0
    while True:
        body = client.get(f"{API}/jobs?per_page=3&app=sleeper&state=PENDING"
                          + (f"&page_token={token}" if token else "")).get_json()
        pages += 1
        assert body["per_page"] == 3 and body["page"] == (None if token else 1)
        seen += [j["job_id"] for j in body["jobs"] if j.get("tag") != "other"]
        if pages == 1:
            newer = submit(client, "sleeper", seconds=0)     # lands above the walk: not seen, nothing repeated
        token = body["next_page_token"]
        assert body["has_next"] is (token is not None)
        if token is None:
            break
    assert seen == ids[::-1] and pages == 3 and newer not in seen
    untagged = client.get(f"{API}/jobs?per_page=2&tag=other").get_json()
    assert len(untagged["jobs"]) == 1 and untagged["next_page_token"] is None
    for bad in ("nonsense", "e30", "W10"):
        r = client.get(f"{API}/jobs?page_token={bad}")
        assert r.status_code == 400 and r.get_json()["parameter"] == "page_token", r.get_json()
    r = client.get(f"{API}/jobs?page=2&page_token={body['jobs'][0]['job_id']}")
    assert r.status_code == 400 and "either 'page' or 'page_token'" in r.get_json()["message"]


def test_input_changed_on_disk_aborts_the_job(app, client):
    rec = upload(client, b"original", "a.txt")
    job_id = submit(client, "checksum", inputfile=rec["uuid"])
    os.chmod(rec["path"], 0o600)
    Path(rec["path"]).write_bytes(b"tampered")
    assert run(app, job_id) == "ABORTED"
    assert "sha256" in client.get(f"{API}/job/{job_id}/status").get_json()["status"]


def test_sfinder_job_finds_sources(app, client, tmp_path):
    from ..apps.fitsgen import default_sources, make_image
    image = make_image(tmp_path / "field.fits", sources=default_sources())
    rec = upload(client, Path(image).read_bytes(), "field.fits")
    job_id = submit(client, "sfinder", inputfile=rec["uuid"], run=True, **{"no-mpi": True})
    assert run(app, job_id) == "SUCCESS", client.get(f"{API}/job/{job_id}/logs").get_json()
    r = client.get(f"{API}/job/{job_id}/output")
    with tarfile.open(fileobj=io.BytesIO(r.data), mode="r:gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
        catalog = tar.extractfile(f"job_{job_id}/field_catalog.csv").read().decode().splitlines()
    assert {"field_catalog.csv", "field_sources.reg", "field_preview.png"} <= names
    assert len(catalog) - 1 == len(default_sources())
