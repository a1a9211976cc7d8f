"""The production front for real: nginx (nginx/caesar-rest.conf, rendered) → uWSGI (uwsgi.ini) → the app on
RabbitMQ + PostgreSQL + a scratch Redis, with a real Celery worker. nginx listens on localhost:8080 as in the
seed README when that port is free, else on a free port (printed; the examples are the same but for the port).
Also: gunicorn (gunicorn.conf.py) as the alternative server, and a graceful uWSGI reload."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from bench.rss import RssSampler

from ..support import (
    API,
    REPO,
    Proc,
    create_pg_database,
    curl,
    drop_pg_database,
    free_port,
    production_settings,
    seed_walkthrough,
    settings_env,
    start_worker,
    wait_state,
)
from .stack import GUNICORN_BIN, SEED_PORT, UWSGI, Nginx, ScratchRedis, ensure_nginx, port_free, wait_http, wait_port

MiB = 1024 * 1024
BIG = 1024 * MiB


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    nginx_bin = ensure_nginx()
    root = Path(os.path.realpath(tmp_path_factory.mktemp("deploy")))
    redis = ScratchRedis(root / "redis")
    redis.start()
    db_url = create_pg_database()
    # Anonymous on purpose (the seed's curl examples send no credentials): uWSGI and gunicorn refuse that unless told.
    settings = production_settings(root / "var", db_url, RESULT_BACKEND=redis.url, ACCEL_REDIRECT=True, STALE_AFTER=20,
                                   ALLOW_ANONYMOUS=True)
    parts: list = [redis]
    try:
        done = subprocess.run([sys.executable, "-m", "caesar_rest.cli", "migrate"], env=settings_env(settings),
                              cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        uwsgi = UWSGI(settings, root, processes=2, threads=2)
        uwsgi.start()
        parts.append(uwsgi)
        port = SEED_PORT if port_free(SEED_PORT) else free_port()
        print(f"\nnginx on localhost:{port}" + ("" if port == SEED_PORT else f" ({SEED_PORT} is taken here)"))
        nginx = Nginx(nginx_bin, root, port, uwsgi.socket, str(root / "var" / "data"))
        nginx.start()
        parts.append(nginx)
        worker = start_worker(settings, ["local"], root / "worker.log", concurrency=2, beat=True, name="deploy-local")
        parts.append(worker)
        wait_http(nginx.base + "/health", status=200)
        yield {"settings": settings, "root": root, "redis": redis, "uwsgi": uwsgi, "nginx": nginx, "worker": worker,
               "base": nginx.base, "figures": {}}
    finally:
        for part in reversed(parts):
            part.stop()
        drop_pg_database(db_url)


def test_seed_curl_examples_through_nginx(stack, tmp_path):
    seen = seed_walkthrough(stack["base"], tmp_path)
    up, job = seen["upload"], seen["job"]
    # The download went through nginx's internal location, the tarball was streamed by the app.
    log = stack["uwsgi"].proc.log()
    assert f"accel=/_caesar_data/anonymous/{up['uuid']}.fits" in log
    assert re.search(rf"method=GET path={API}/job/{job['job_id']}/output status=200 .*duration_ms=", log)
    # The worker's lines about this job carry its id.
    worker_log = stack["worker"].log()
    assert f"[job {job['job_id']}]" in worker_log


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """1 GiB of incompressible bytes, written cheaply (one random MiB repeated), with its sha256."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        for _ in range(BIG // MiB):
            fh.write(block)
            digest.update(block)
    yield path, digest.hexdigest()
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def big_upload(stack, big_file, tmp_path_factory):
    """The 1 GiB file uploaded through nginx with curl, the uWSGI workers' RSS watched all along."""
    path, digest = big_file
    base = stack["base"]
    small = tmp_path_factory.mktemp("warm") / "warm.txt"
    small.write_bytes(b"x" * 4096)
    for _ in range(8):   # every uWSGI worker thread has served an upload before we measure
        curl("-F", f"file=@{small}", "--url", f"{base}{API}/upload", cwd=small.parent)
    pids = stack["uwsgi"].worker_pids()
    with RssSampler(pids) as rss:
        t0 = time.perf_counter()
        answer = json.loads(curl("-X", "POST", "-H", "Content-Type: multipart/form-data", "-F", f"file=@{path.name}",
                                 "--url", f"{base}{API}/upload", cwd=path.parent))
        elapsed = time.perf_counter() - t0
    assert stack["uwsgi"].worker_pids() == pids, "a uWSGI worker was replaced during the upload"
    stack["figures"]["upload"] = {"seconds": round(elapsed, 2), "MiB_per_s": round(BIG / MiB / elapsed, 1),
                                  "rss": rss.describe()}
    print(f"\n1 GiB upload through nginx: {elapsed:.1f} s, {BIG / MiB / elapsed:.0f} MiB/s; {rss.describe()}")
    yield answer, digest, rss
    requests.delete(f"{base}{API}/delete/{answer['uuid']}", timeout=30)   # 1 GiB less left in pytest's tmp


def test_1gib_upload_through_nginx_keeps_uwsgi_memory_flat(stack, big_upload):
    answer, digest, rss = big_upload
    assert answer["status"] == "File uploaded with success"
    assert answer["size_bytes"] == BIG and answer["sha256"] == digest
    assert os.path.getsize(answer["path"]) == BIG
    peak, after = rss.growth()
    assert peak <= 50 * MiB and after <= 50 * MiB, rss.describe()
    # nginx did not spool the body either (uwsgi_request_buffering off): no client body temp file was kept.
    spool = stack["nginx"].run / "client_body"
    assert not spool.exists() or sum(f.stat().st_size for f in spool.rglob("*") if f.is_file()) == 0


def test_large_download_is_sent_by_nginx(stack, big_upload):
    answer, digest, _rss = big_upload
    base, uwsgi = stack["base"], stack["uwsgi"]
    url = f"{base}{API}/download-id/{answer['uuid']}"
    with RssSampler(uwsgi.worker_pids()) as rss:
        t0 = time.perf_counter()
        sha = hashlib.sha256()
        size = 0
        with requests.get(url, stream=True, timeout=120, headers={"X-Request-ID": "dl-check-1"}) as r:
            assert r.status_code == 200, r.text[:300]
            headers = r.headers
            for chunk in r.iter_content(4 * MiB):
                sha.update(chunk)
                size += len(chunk)
        elapsed = time.perf_counter() - t0
    stack["figures"]["download"] = {"seconds": round(elapsed, 2), "MiB_per_s": round(BIG / MiB / elapsed, 1)}
    print(f"\n1 GiB download through nginx: {elapsed:.1f} s, {BIG / MiB / elapsed:.0f} MiB/s; {rss.describe()}")
    assert size == BIG and sha.hexdigest() == digest
    assert int(headers["Content-Length"]) == BIG
    disposition = headers["Content-Disposition"]
    assert re.fullmatch(r'attachment; filename="?big\.bin"?', disposition), disposition
    assert headers["X-Request-ID"] == "dl-check-1"
    assert "X-Accel-Redirect" not in headers
    assert f"accel=/_caesar_data/anonymous/{answer['uuid']}.bin" in uwsgi.proc.log()
    assert rss.growth()[0] <= 50 * MiB, rss.describe()
    # nginx serves byte ranges from the same location: resumable downloads for free.
    part = requests.get(url, headers={"Range": "bytes=1048570-1048585"}, timeout=30)
    assert part.status_code == 206 and len(part.content) == 16
    with open(answer["path"], "rb") as fh:
        fh.seek(1048570)
        assert part.content == fh.read(16)
    # The internal location is not reachable from outside.
    direct = requests.get(f"{base}/_caesar_data/anonymous/{answer['uuid']}.bin", timeout=10)
    assert direct.status_code == 404


def test_chunked_upload_through_nginx(stack, tmp_path):
    # nginx buffers a chunked body and hands uWSGI a Content-Length: a client that streams works as one that does not.
    data = os.urandom(3 * MiB + 5)
    (tmp_path / "stream.bin").write_bytes(data)
    answer = json.loads(curl("-H", "Transfer-Encoding: chunked", "-F", "file=@stream.bin", "-F", "tag=chunked",
                             "--url", f"{stack['base']}{API}/upload", cwd=tmp_path))
    assert answer["size_bytes"] == len(data) and answer["sha256"] == hashlib.sha256(data).hexdigest(), answer
    assert answer["tag"] == "chunked"
    assert Path(answer["path"]).read_bytes() == data


def test_request_id_in_and_out_and_one_access_line(stack):
    base = stack["base"]
    r = requests.get(f"{base}{API}/apps", headers={"X-Request-ID": "deploy-rid-42"}, timeout=10)
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "deploy-rid-42"
    fresh = requests.get(f"{base}/health", timeout=10)
    rid = fresh.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)          # nginx's $request_id, passed to and echoed by the app
    deadline = time.time() + 5
    while time.time() < deadline and f"[request {rid}]" not in stack["uwsgi"].proc.log():
        time.sleep(0.1)
    log = stack["uwsgi"].proc.log()
    lines = [line for line in log.splitlines() if "[request deploy-rid-42]" in line and "caesar.access" in line]
    assert len(lines) == 1, lines
    assert re.search(r"method=GET path=/caesar/api/v1\.0/apps status=200 endpoint=\S+ remote=\S+ duration_ms=[\d.]+",
                     lines[0]), lines[0]
    assert f"[request {rid}]" in log
    # nginx writes its access line after the response has gone out: the client can read the log first.
    while time.time() < deadline and f"rid={rid}" not in stack["nginx"].access_log():
        time.sleep(0.1)
    assert "rid=deploy-rid-42" in stack["nginx"].access_log() and f"rid={rid}" in stack["nginx"].access_log()


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_from_the_database_broker_and_all_uwsgi_processes(stack, big_upload):
    base = stack["base"]
    job = requests.post(f"{base}{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 0}}, timeout=10).json()
    st = wait_state(lambda j: requests.get(f"{base}{API}/job/{j}/status", timeout=10).json(), job["job_id"], timeout=60)
    assert st["state"] == "SUCCESS"
    scrapes = [requests.get(f"{base}/metrics", timeout=10) for _ in range(4)]   # answered by both processes
    for r in scrapes:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = scrapes[-1].text
    assert _metric(text, "caesar_jobs", app="sleeper", backend="local", state="SUCCESS") >= 1
    assert _metric(text, "caesar_jobs", app="sleeper", backend="local", state="RUNNING") == 0
    assert _metric(text, "caesar_job_duration_seconds_count", app="sleeper", backend="local") >= 1
    assert _metric(text, "caesar_job_duration_seconds_bucket", app="sleeper", le="+Inf") >= 1
    assert _metric(text, "caesar_broker_up") == 1
    queue = stack["settings"]["QUEUE_PREFIX"] + "local"
    assert _metric(text, "caesar_queue_messages", pool="local", queue=queue) == 0
    assert _metric(text, "caesar_queue_consumers", pool="local") >= 1          # the worker, seen by RabbitMQ
    # Counters are shared by the uWSGI processes: every scrape sees the whole 1 GiB upload.
    for r in scrapes:
        assert _metric(r.text, "caesar_upload_bytes_total") >= BIG
    assert _metric(text, "caesar_http_requests_total", endpoint="files.upload", method="POST", status="200") >= 9


def test_health_503_while_redis_is_down_and_200_when_it_returns(stack):
    base, redis = stack["base"], stack["redis"]
    ok = requests.get(f"{base}/health", timeout=10).json()
    assert ok["status"] == "ok" and set(ok["checks"]) >= {"database", "broker", "result_store", "backends"}
    assert all(c["status"] == "ok" and c["latency_ms"] >= 0 for k, c in ok["checks"].items() if k != "backends")
    assert ok["checks"]["backends"]["local"]["status"] in ("ok", "unchecked")
    redis.stop()
    try:
        r = requests.get(f"{base}/health", timeout=15)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "down" and body["checks"]["result_store"]["status"] == "down"
        assert body["checks"]["database"]["status"] == "ok" and body["checks"]["broker"]["status"] == "ok"
    finally:
        redis.start()
    back = wait_http(f"{base}/health", timeout=15, status=200)
    assert back.json()["checks"]["result_store"]["status"] == "ok"


def test_swagger_ui_comes_from_the_server_itself(stack):
    base = stack["base"]
    page = requests.get(f"{base}/swagger", timeout=10)
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {"/static/swagger/swagger-ui-bundle.js", "/static/swagger/swagger-ui.css"} <= set(assets)
    for asset in assets:
        r = requests.get(base + asset, timeout=10)
        assert r.status_code == 200 and len(r.content) > 1000, asset
        if asset.endswith(".css"):
            assert not re.search(r"url\(\s*['\"]?(https?:)?//", r.text)
    spec = requests.get(f"{base}/openapi.json", timeout=10).json()
    assert f"{API}/upload" in spec["paths"] and "/health" in spec["paths"] and "/metrics" in spec["paths"]


def test_celery_inspect_ping_sees_the_worker(stack):
    env = settings_env(stack["settings"])
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "workers.celery", "inspect", "ping",
                           "--timeout", "5", "--json"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    replies = json.loads(done.stdout.strip().splitlines()[-1])
    assert any(name.startswith("deploy-local@") and reply == {"ok": "pong"} for name, reply in replies.items()), replies


def test_gunicorn_alternative_serves_the_app(stack, tmp_path):
    port = free_port()
    env = {**settings_env(stack["settings"]), "CAESAR_WSGI_SOCKET": f"127.0.0.1:{port}", "CAESAR_WSGI_PROCESSES": "1",
           "CAESAR_WSGI_THREADS": "2"}
    proc = Proc([str(GUNICORN_BIN), "-c", str(REPO / "gunicorn.conf.py"), "caesar_rest.wsgi:app"], env,
                tmp_path / "gunicorn.log")
    try:
        wait_port(port, 60, proc)
        r = wait_http(f"http://127.0.0.1:{port}/health", timeout=30, status=200)
        assert r.json()["status"] == "ok" and r.headers["X-Request-ID"]
        assert requests.get(f"http://127.0.0.1:{port}{API}/apps", timeout=10).status_code == 200
    finally:
        proc.stop()


def test_graceful_reload_by_touch(stack):
    uwsgi = stack["uwsgi"]
    before_pids, ready = uwsgi.worker_pids(), uwsgi.ready_count()
    (uwsgi.rundir / "reload").touch()
    uwsgi.wait_ready(ready, timeout=60)
    r = wait_http(f"{stack['base']}/health", timeout=20, status=200)
    assert r.json()["status"] == "ok"
    assert not set(uwsgi.worker_pids()) & set(before_pids)


def test_ogc_api_processes_through_nginx(stack):
    """/ogcapi behind nginx and uWSGI: with the default OGC_SYNC_WAIT (240 s, below nginx's 300 s) the sleeper
    (600 s limit) runs asynchronously even when asked without a preference; its archive streams through the
    results location unbuffered. Debian's uwsgi_params pass the Host without its port, so the links name the
    host alone here (PUBLIC_URL gives them the URL clients use); their paths are followed."""
    import io
    import tarfile
    from urllib.parse import urlsplit

    base = stack["base"]
    r = requests.post(f"{base}/ogcapi/processes/sleeper/execution", json={"inputs": {"message": "via nginx"}},
                      timeout=30)
    assert r.status_code == 201, r.text
    job = r.json()["jobID"]
    assert urlsplit(r.headers["Location"]).path == f"/ogcapi/jobs/{job}"
    wait_state(lambda j: {"state": requests.get(f"{base}/ogcapi/jobs/{j}", timeout=10).json()["status"]}, job,
               ["successful", "failed"], timeout=120)
    results = requests.get(f"{base}/ogcapi/jobs/{job}/results", timeout=10).json()
    assert results["sleeper"]["value"].strip() == "via nginx"
    archive = requests.get(base + urlsplit(results["archive"]["href"]).path, timeout=60)
    assert archive.status_code == 200 and archive.headers["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        assert f"job_{job}/sleeper.txt" in tar.getnames()


def test_dashboard_through_nginx(stack, tmp_path):
    """/ui/ behind nginx and uWSGI (two processes, anonymous here): the session cookie is read by either process
    (one key in <ROOT>/ui-secret), an upload goes through the dashboard's unbuffered location, a job submitted by
    its form runs, and its tarball streams; the file's download is handed to nginx (X-Accel-Redirect)."""
    import io
    import tarfile

    base = stack["base"]
    s = requests.Session()
    first = s.get(f"{base}/ui/files", timeout=10)
    assert first.status_code == 200 and "default-src 'none'" in first.headers["Content-Security-Policy"]
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', first.text).group(1)
    for _ in range(8):      # each uWSGI process decodes the same cookie: the same token every time
        again = s.get(f"{base}/ui/jobs", timeout=10)
        assert re.search(r'name="csrf-token" content="([^"]+)"', again.text).group(1) == csrf
    data = os.urandom(3 * MiB)
    r = s.post(f"{base}/ui/files/upload", files={"file": ("blob.bin", data)}, headers={"X-CSRF-Token": csrf},
               timeout=60)
    assert r.status_code == 200, r.text
    uuid = r.json()["uuid"]
    assert s.post(f"{base}/ui/files/upload", files={"file": ("x.bin", b"x")}, timeout=10).status_code == 403
    got = s.get(f"{base}/ui/files/{uuid}/download", timeout=60)
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == hashlib.sha256(data).hexdigest()
    r = s.post(f"{base}/ui/apps/sleeper", data={"csrf_token": csrf, "seconds": "0", "message": "dashboard"},
               allow_redirects=False, timeout=30)
    assert r.status_code == 303, r.text
    job = r.headers["Location"].rsplit("/", 1)[1]
    wait_state(lambda j: s.get(f"{base}/ui/jobs/{j}/live", timeout=10).json(), job, ["SUCCESS", "FAILURE"],
               timeout=120)
    archive = s.get(f"{base}/ui/jobs/{job}/tarball", timeout=60)
    assert archive.status_code == 200 and archive.headers["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        assert f"job_{job}/sleeper.txt" in tar.getnames()
