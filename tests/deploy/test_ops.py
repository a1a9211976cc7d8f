"""Ops surfaces in process: /health variants, /metrics (format, DB-derived gauges and histogram, shared counters,
queue depth on each broker transport), request ids and JSON access lines, job ids on worker lines, X-Accel-Redirect."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
import types
import uuid
from datetime import timedelta

import pytest
from celery import signals

from caesar_rest import create_app, metrics
from caesar_rest.celery_app import make_celery
from caesar_rest.config import load_settings, queue_name
from caesar_rest.db import dispose_all, session_scope
from caesar_rest.logs import ContextFormatter, JsonFormatter
from caesar_rest.models import Job, utcnow

from ..support import API, RABBIT, REDIS, embedded_settings, free_port

FAKES = "tests.deploy.fake_backends"
# /health shows error texts and details to authenticated admins only (anonymous callers get status and latency).
ADMIN = {"AUTH_MODE": "token", "AUTH_USERS": {"ops": {"tokens_sha256": [hashlib.sha256(b"ops-token").hexdigest()],
                                                      "admin": True}}}
AS_ADMIN = {"Authorization": "Bearer ops-token"}
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
                    r'(-?[0-9.]+(e[+-]?[0-9]+)?|\+Inf|-Inf|NaN)$')


@pytest.fixture
def make_app(tmp_path):
    def make(**extra):
        return create_app(embedded_settings(tmp_path / "var", **extra))
    yield make
    dispose_all()


def get(client, url, **kw):
    """A request whose response is closed, so the close hooks (access line, counters) have run."""
    with client.get(url, **kw) as response:
        response.get_data()
    return response


def upload(client, content: bytes, name: str) -> dict:
    with client.post(f"{API}/upload", data={"file": (io.BytesIO(content), name)},
                     content_type="multipart/form-data") as response:
        assert response.status_code == 200, response.get_json()
        return response.get_json()


def test_health_reports_every_part_with_latency(client):
    r = get(client, "/health")
    body = r.get_json()
    assert r.status_code == 200 and body["status"] == "ok"
    for part in ("database", "broker", "result_store"):
        assert body["checks"][part]["status"] == "ok" and body["checks"][part]["latency_ms"] >= 0
        assert body["checks"][part]["required"] is True
    local = body["checks"]["backends"]["local"]      # its job directory is writable and has room
    assert local["status"] == "ok" and local["required"] is True and local["latency_ms"] >= 0


def test_health_is_503_when_the_broker_is_unreachable(make_app):
    app = make_app(BROKER_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}//", **ADMIN)
    t0 = time.monotonic()
    r = get(app.test_client(), "/health", headers=AS_ADMIN)
    assert time.monotonic() - t0 < 6
    body = r.get_json()
    assert r.status_code == 503 and body["status"] == "down"
    assert body["checks"]["broker"]["status"] == "down" and body["checks"]["broker"]["error"]
    assert body["checks"]["database"]["status"] == "ok"


def test_backend_health_methods_are_called_when_present(make_app):
    backends = {"local": {}, "plain": {"class": f"{FAKES}:PlainBackend"},
                "healthy": {"class": f"{FAKES}:HealthyBackend"},
                "broken": {"class": f"{FAKES}:BrokenBackend"}, "hanging": {"class": f"{FAKES}:HangingBackend"}}
    app = make_app(BACKENDS=backends, HEALTH_TIMEOUT=1, **ADMIN)
    r = get(app.test_client(), "/health", headers=AS_ADMIN)
    body = r.get_json()
    got = body["checks"]["backends"]
    # Only the default backend is required: the others going down degrade the service, they do not fail it.
    assert r.status_code == 200 and body["status"] == "degraded", body
    assert got["local"]["status"] == "ok" and got["local"]["required"]
    assert got["plain"] == {"status": "unchecked", "required": False}
    assert got["healthy"]["status"] == "ok" and got["healthy"]["detail"] == {"slots": 2}
    assert got["broken"]["status"] == "down" and "refused the connection" in got["broken"]["error"]
    assert got["hanging"]["status"] == "down" and "no answer in 1 s" in got["hanging"]["error"]
    # Asked again while the stuck check still runs: reported down again, not started a second time.
    from .fake_backends import HangingBackend

    again = get(app.test_client(), "/health", headers=AS_ADMIN).get_json()["checks"]["backends"]["hanging"]
    assert again["status"] == "down" and HangingBackend.calls == 1
    strict = make_app(BACKENDS=backends, HEALTH_TIMEOUT=1, HEALTH_REQUIRED_BACKENDS=["local", "broken"])
    r = get(strict.test_client(), "/health")
    assert r.status_code == 503 and r.get_json()["checks"]["backends"]["broken"]["required"]


def _add_job(url: str, state: str, elapsed: float | None, app: str = "sleeper") -> None:
    with session_scope(url) as s:
        now = utcnow()
        s.add(Job(id=str(uuid.uuid4()), owner="anonymous", app=app, backend="local", state=state,
                  workdir="/nonexistent",
                  submit_date=now - timedelta(seconds=elapsed or 0), elapsed=elapsed, job_inputs={}, argv=[], spec={},
                  extra={}))


def test_metrics_exposition_gauges_histogram_and_counters(app, client):
    url = app.config["DATABASE_URL"]
    _add_job(url, "SUCCESS", 2.0)
    _add_job(url, "FAILURE", 100.0)
    _add_job(url, "RUNNING", None)
    _add_job(url, "SUCCESS", 7000.0, app="sfinder")
    record = upload(client, b"0123456789" * 1000, name="ten.txt")
    get(client, f"{API}/download-id/{record['uuid']}")
    r = get(client, "/metrics")
    assert r.status_code == 200 and r.content_type == metrics.CONTENT_TYPE
    text = r.get_data(as_text=True)
    typed = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        elif not line.startswith("#"):
            assert SAMPLE.match(line), line
            family = re.split(r"[{ ]", line)[0]
            assert any(family == t or family.startswith(t + "_") for t in typed), line
    lines = set(text.splitlines())
    assert 'caesar_jobs{app="sleeper",backend="local",state="SUCCESS"} 1' in lines
    assert 'caesar_jobs{app="sleeper",backend="local",state="RUNNING"} 1' in lines
    assert 'caesar_jobs{app="sleeper",backend="local",state="PENDING"} 0' in lines
    assert 'caesar_job_duration_seconds_bucket{app="sleeper",backend="local",le="1"} 0' in lines
    assert 'caesar_job_duration_seconds_bucket{app="sleeper",backend="local",le="5"} 1' in lines
    assert 'caesar_job_duration_seconds_bucket{app="sleeper",backend="local",le="300"} 2' in lines
    assert 'caesar_job_duration_seconds_bucket{app="sleeper",backend="local",le="+Inf"} 2' in lines
    assert 'caesar_job_duration_seconds_sum{app="sleeper",backend="local"} 102' in lines
    assert 'caesar_job_duration_seconds_count{app="sleeper",backend="local"} 2' in lines
    assert 'caesar_job_duration_seconds_bucket{app="sfinder",backend="local",le="3600"} 0' in lines
    assert 'caesar_queue_messages{pool="local",queue="local"} 0' in lines and "caesar_broker_up 1" in lines
    assert "caesar_uploads_total 1" in lines and "caesar_upload_bytes_total 10000" in lines
    assert 'caesar_downloads_total{via="app"} 1' in lines and 'caesar_download_bytes_total{via="app"} 10000' in lines
    assert 'caesar_http_requests_total{endpoint="files.upload",method="POST",status="200"} 1' in lines


def test_counters_are_shared_between_app_instances(make_app):
    """Two apps on one ROOT stand for two uWSGI processes: each sees the other's requests."""
    one, two = make_app(), make_app()
    for _ in range(3):
        get(one.test_client(), f"{API}/apps")
    get(two.test_client(), f"{API}/apps")
    text = get(two.test_client(), "/metrics").get_data(as_text=True)
    assert 'caesar_http_requests_total{endpoint="apps.list_apps",method="GET",status="200"} 4' in text


@pytest.mark.parametrize("transport", ["amqp", "redis", "filesystem"])
def test_queue_depth_on_each_broker_transport(transport, tmp_path):
    broker = {"amqp": RABBIT, "redis": REDIS, "filesystem": "filesystem://"}[transport]
    prefix = f"qd{uuid.uuid4().hex[:8]}."
    settings = load_settings({"ROOT": str(tmp_path / "var"), "BROKER_URL": broker, "QUEUE_PREFIX": prefix}, environ={})
    celery = make_celery(settings)
    queue = queue_name(settings, "local")
    try:
        assert metrics.queue_depths(celery, settings)["local"][0] == 0     # not even declared yet
        for i in range(3):
            celery.send_task("caesar.nothing", args=[i], queue=queue, routing_key=queue)
        messages, consumers = metrics.queue_depths(celery, settings)["local"]
        assert messages == 3
        assert consumers == (0 if transport == "amqp" else None)
    finally:
        with celery.connection_for_write() as conn:
            channel = conn.channel()
            try:
                channel.queue_delete(queue)
            except Exception:
                pass
            channel.close()


def test_request_id_kept_when_sane_replaced_otherwise(client, caplog):
    caplog.set_level(logging.INFO, logger="caesar.access")
    assert get(client, "/health", headers={"X-Request-ID": "abc-123.x"}).headers["X-Request-ID"] == "abc-123.x"
    replaced = get(client, "/health", headers={"X-Request-ID": "no spaces <allowed>"}).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", replaced)
    assert re.fullmatch(r"[0-9a-f]{32}", get(client, "/health").headers["X-Request-ID"])
    access = [r for r in caplog.records if r.name == "caesar.access"]
    assert [r.caesar_context["request_id"] for r in access][:2] == ["abc-123.x", replaced]
    line = ContextFormatter().format(access[0])
    assert re.search(r"caesar\.access: \[request abc-123\.x\] method=GET path=/health status=200 "
                     r".*duration_ms=[\d.]+", line)


def test_json_access_lines(make_app, caplog):
    app = make_app(LOG_JSON=True)
    caplog.set_level(logging.INFO, logger="caesar.access")
    get(app.test_client(), f"{API}/apps", headers={"X-Request-ID": "json-1"})
    record = [r for r in caplog.records if r.name == "caesar.access"][-1]
    doc = json.loads(JsonFormatter().format(record))
    assert doc["request_id"] == "json-1" and doc["method"] == "GET" and doc["path"] == f"{API}/apps"
    assert doc["status"] == 200 and doc["duration_ms"] >= 0 and doc["logger"] == "caesar.access" and doc["time"]


def test_worker_lines_carry_the_job_id():
    """What the Celery signals do in a worker process: lines logged while a job task runs name the job."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(ContextFormatter(logging.Formatter("%(levelname)s %(message)s")))
    logger = logging.getLogger("caesar.test.worker")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    class FakeTask:      # hashable, like a Celery task
        name = "caesar.run_job"
        request = types.SimpleNamespace()

    task = FakeTask()
    try:
        signals.task_prerun.send(sender=task, task_id="t1", task=task, args=["job-123"], kwargs={})
        logger.info("staging %d inputs", 2)
        signals.task_postrun.send(sender=task, task_id="t1", task=task, args=["job-123"], kwargs={}, retval="SUCCESS")
        logger.info("idle")
    finally:
        logger.removeHandler(handler)
    assert out.getvalue().splitlines() == ["INFO [job job-123] staging 2 inputs", "INFO idle"]


def test_accel_redirect_hands_the_file_to_nginx(make_app):
    client = make_app(ACCEL_REDIRECT=True).test_client()
    record = upload(client, b"fits bytes", name="image.fits")
    r = get(client, f"{API}/download-id/{record['uuid']}")
    assert r.status_code == 200 and r.data == b""
    assert r.headers["X-Accel-Redirect"] == f"/_caesar_data/anonymous/{record['uuid']}.fits"
    assert r.headers["Content-Disposition"] == "attachment; filename=image.fits"
    accented = upload(client, b"x", name="périphérie.txt")
    r = get(client, f"{API}/download-id/{accented['uuid']}")
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "filename*=UTF-8''p%C3%A9riph%C3%A9rie.txt" in r.headers["Content-Disposition"]
    assert get(client, f"{API}/download-id/{uuid.uuid4().hex}").status_code == 404     # checks still run here
    text = get(client, "/metrics").get_data(as_text=True)
    assert 'caesar_download_bytes_total{via="nginx"} 11' in text
