"""The dashboard's server side through Flask's test client (embedded default, no worker: no job runs here):
sign-in, the cookie's flags, CSRF, the CSP, the generated form and its errors, another user's job."""
from __future__ import annotations

import re

import pytest

from caesar_rest import create_app
from caesar_rest.auth import hash_token
from caesar_rest.db import dispose_all
from caesar_rest.models import Job

from ..support import embedded_settings

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789"}


@pytest.fixture
def app(tmp_path):
    users = {name: {"tokens_sha256": [hash_token(t)]} for name, t in TOKENS.items()}
    app = create_app(embedded_settings(tmp_path / "var", AUTH_MODE="token", AUTH_USERS=users))
    yield app
    dispose_all()


def _csrf(html: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


def sign_in(client, user: str):
    page = client.get("/ui/login")
    r = client.post("/ui/login", data={"csrf_token": _csrf(page.text), "user": user, "secret": TOKENS[user]})
    assert r.status_code == 303, r.text
    return r


def test_sign_in_cookie_and_csp(app):
    client = app.test_client()
    r = client.get("/ui/jobs", headers={"Accept": "text/html"})
    assert r.status_code == 302 and "/ui/login" in r.headers["Location"]
    page = client.get("/ui/login")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "<script>" not in page.text and "unsafe-inline" not in page.headers["Content-Security-Policy"]
    bad = client.post("/ui/login", data={"csrf_token": _csrf(page.text), "user": "alice", "secret": "nope"})
    assert bad.status_code == 401 and "were not accepted" in bad.text
    r = sign_in(client, "alice")
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui/" in cookie
    assert "Secure" not in cookie                    # plain HTTP here; behind TLS it is set
    jobs = client.get("/ui/jobs")
    assert jobs.status_code == 200 and 'id="user">alice<' in jobs.text
    # the API itself is not opened by the dashboard's cookie
    assert client.get("/caesar/api/v1.0/jobs").status_code == 401


def test_csrf_required(app):
    client = app.test_client()
    sign_in(client, "alice")
    r = client.post("/ui/apps/sleeper", data={"seconds": "1"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = client.post("/ui/logout", data={"csrf_token": "forged"})
    assert r.status_code == 403


def test_form_generated_and_errors_beside_input(app):
    client = app.test_client()
    sign_in(client, "alice")
    page = client.get("/ui/apps/sfinder")
    assert page.status_code == 200
    html = page.text
    assert re.search(r'id="in-seedthr" name="seedthr" type="number" value="5.0"\s+step="any" min="0.5" max="1000"',
                     html)
    assert 'id="in-deblend" name="deblend" type="checkbox"' in html
    assert 'name="no-mpi"' not in html                 # no effect: not offered
    assert '<details class="group" id="group-background" >' in html    # advanced: folded
    r = client.post("/ui/apps/sfinder", data={"csrf_token": _csrf(html), "seedthr": "5000", "inputfile": ""})
    assert r.status_code == 400
    assert ('id="error-seedthr">Option &#39;seedthr&#39; of app &#39;sfinder&#39; must be &lt;= 1000, not 5000.0<'
            in r.text)
    with app.app_context():
        from caesar_rest.api.common import session
        with session() as s:
            assert s.query(Job).count() == 0


def test_other_users_job_is_404(app):
    client = app.test_client()
    sign_in(client, "bob")
    from caesar_rest.states import NewJob, insert_job
    with app.app_context():
        from caesar_rest.api.common import session
        with session() as s:
            job = insert_job(s, NewJob(owner="alice", kind="app", app="sleeper", app_version="1", backend="local",
                                       tag=None, job_inputs={}, argv=["x"], workdir_root=str(app.config["JOBS_DIR"]),
                                       spec={}, inputs=[]))
            job_id = job.id
    r = client.get(f"/ui/jobs/{job_id}")
    assert r.status_code == 404 and "not found" in r.text
    assert client.get(f"/ui/jobs/{job_id}/live").status_code == 404
    assert client.get(f"/ui/jobs/{job_id}/tarball").status_code == 404
