"""/health and /metrics give anonymous callers no internal addresses or error texts: those go to the log and to
authenticated admins. The result store here is a Redis address where nothing listens, so its check fails with an
error naming that address. Through the Flask test client: what is disclosed does not depend on the server."""
from __future__ import annotations

import logging

from caesar_rest import create_app
from caesar_rest.auth import hash_token
from caesar_rest.db import dispose_all

from ..support import embedded_settings, free_port

USERS = {"root": {"tokens_sha256": [hash_token("admin-token")], "admin": True},
         "alice": {"tokens_sha256": [hash_token("alice-token")]}}


def _app(tmp_path, **extra):
    port = free_port()            # nothing listens there
    settings = embedded_settings(tmp_path / "var", RESULT_BACKEND=f"redis://127.0.0.1:{port}/0", HEALTH_TIMEOUT=10,
                                 **extra)
    return create_app(settings), str(port)


def test_health_shows_errors_to_admins_only(tmp_path, caplog):
    """The old code answered every caller with the check's error text, here the result store's address."""
    app, port = _app(tmp_path, AUTH_MODE="token", AUTH_USERS=USERS)
    client = app.test_client()
    try:
        with caplog.at_level(logging.WARNING, logger="caesar_rest.api.ops"):
            for headers in ({}, {"Authorization": "Bearer alice-token"}, {"Authorization": "Bearer wrong"}):
                answer = client.get("/health", headers=headers)
                assert answer.status_code == 503
                store = answer.get_json()["checks"]["result_store"]
                assert store["status"] == "down" and store["required"] is True
                assert set(store) == {"status", "latency_ms", "required"}, store
                assert port not in answer.get_data(as_text=True) and "127.0.0.1" not in answer.get_data(as_text=True)
            admin = client.get("/health", headers={"Authorization": "Bearer admin-token"})
            assert admin.status_code == 503 and port in admin.get_json()["checks"]["result_store"]["error"]
        logged = [r.getMessage() for r in caplog.records if "result_store" in r.getMessage()]
        assert len(logged) == 1 and port in logged[0], logged       # logged once, not at every poll
    finally:
        dispose_all()


def test_anonymous_mode_health_and_metrics_name_nothing_internal(tmp_path):
    """With AUTH_MODE none every caller is anonymous, admin or not: errors go to the log only."""
    app, port = _app(tmp_path, BROKER_URL=f"amqp://guest:secret@127.0.0.1:{free_port()}//")
    client = app.test_client()
    try:
        health = client.get("/health")
        assert health.status_code == 503
        text = health.get_data(as_text=True)
        assert port not in text and "127.0.0.1" not in text and "error" not in text, text
        metrics = client.get("/metrics").get_data(as_text=True)
        assert "caesar_broker_up 0" in metrics
        assert "127.0.0.1" not in metrics and "amqp" not in metrics and "secret" not in metrics
    finally:
        dispose_all()
