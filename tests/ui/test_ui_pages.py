"""The dashboard's server side through Flask's test client (embedded default, no worker: no job runs here):
sign-in, the cookie's flags, CSRF, the CSP, the generated form and its errors, another user's job."""
from __future__ import annotations

import io
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


def test_file_in_use_cannot_be_deleted(app):
    client = app.test_client()
    sign_in(client, "alice")
    csrf = _csrf(client.get("/ui/files").text)
    r = client.post("/ui/files/upload", data={"file": (io.BytesIO(b"SIMPLE  =                    T"), "img.fits")},
                    headers={"X-CSRF-Token": csrf}, content_type="multipart/form-data")
    assert r.status_code == 200, r.text
    uuid = r.get_json()["uuid"]
    from caesar_rest.states import NewJob, insert_job
    used = {"file_uuid": uuid, "option": "inputfile", "relpath": "inputs/img.fits", "sha256": r.get_json()["sha256"],
            "size_bytes": 30, "crc64nvme": None}
    with app.app_context():
        from caesar_rest.api.common import session
        with session() as s:     # a PENDING job reading the file (no worker here: it stays so)
            job = insert_job(s, NewJob(owner="alice", kind="app", app="sfinder", app_version="1", backend="local",
                                       tag=None, job_inputs={"inputfile": uuid}, argv=["x"],
                                       workdir_root=str(app.config["JOBS_DIR"]), spec={}, inputs=[used]))
            job_id = job.id
    page = client.get("/ui/files").text
    assert "in use by job" in page and job_id[:8] in page and f"/ui/files/{uuid}/delete" not in page
    refused = client.post(f"/ui/files/{uuid}/delete", data={"csrf_token": csrf})
    assert refused.status_code == 409 and f"is used by job {job_id}" in refused.text
    assert uuid in client.get("/ui/files").text


def test_sign_in_next_stays_on_the_dashboard(app):
    client = app.test_client()
    page = client.get("/ui/login?next=//evil.example/ui/")
    r = client.post("/ui/login", data={"csrf_token": _csrf(page.text), "user": "alice", "secret": TOKENS["alice"],
                                       "next": "https://evil.example/ui/"})
    assert r.status_code == 303 and r.headers["Location"] == "/ui/jobs"


def test_basic_mode_and_a_changed_password(tmp_path):
    from werkzeug.security import generate_password_hash

    users = {"carol": {"password_hash": generate_password_hash("first-secret")}}
    app = create_app(embedded_settings(tmp_path / "var", AUTH_MODE="basic", AUTH_USERS=users))
    try:
        client = app.test_client()
        page = client.get("/ui/login")
        assert 'type="password"' in page.text and "Password" in page.text
        r = client.post("/ui/login", data={"csrf_token": _csrf(page.text), "user": "carol", "secret": "first-secret"})
        assert r.status_code == 303
        assert client.get("/ui/files").status_code == 200
        users["carol"]["password_hash"] = generate_password_hash("second-secret")     # the session ends with it
        app.config["AUTH_USERS"] = users
        assert client.get("/ui/files", headers={"Accept": "text/html"}).status_code == 302
    finally:
        dispose_all()


def test_anonymous_mode_needs_no_sign_in(tmp_path):
    app = create_app(embedded_settings(tmp_path / "var"))
    try:
        client = app.test_client()
        r = client.get("/ui/jobs")
        assert r.status_code == 200 and 'id="user">anonymous<' in r.text
        assert client.get("/ui/login").status_code == 302
        assert client.post("/ui/apps/sleeper", data={"seconds": "1"}).status_code == 403     # CSRF all the same
    finally:
        dispose_all()


def test_jobs_table_keyset_pages_and_filters(app):
    from caesar_rest.states import NewJob, insert_job
    from caesar_rest.ui.jobs import PER_PAGE

    client = app.test_client()
    sign_in(client, "alice")
    with app.app_context():
        from caesar_rest.api.common import session
        for i in range(PER_PAGE + 5):
            with session() as s:
                insert_job(s, NewJob(owner="alice", kind="app", app="sleeper", app_version="1", backend="local",
                                     tag="odd" if i % 2 else "even", job_inputs={}, argv=["x"],
                                     workdir_root=str(app.config["JOBS_DIR"]), spec={}, inputs=[]))
    first = client.get("/ui/jobs").text
    ids = re.findall(r'<tr class="job" data-id="([0-9a-f-]+)"', first)
    assert len(ids) == PER_PAGE
    older = re.search(r'href="([^"]+)" id="next-page"', first).group(1).replace("&amp;", "&")
    second = client.get(older).text
    more = re.findall(r'<tr class="job" data-id="([0-9a-f-]+)"', second)
    assert len(more) == 5 and not set(more) & set(ids) and 'id="next-page"' not in second
    odd = client.get("/ui/jobs?tag=odd&state=pending").text
    assert len(re.findall(r'<tr class="job"', odd)) == (PER_PAGE + 5) // 2
    assert client.get("/ui/jobs?state=BOGUS").status_code == 400
    states = client.get("/ui/jobs/states?" + "&".join(f"id={i}" for i in ids[:3])).get_json()
    assert set(states) == set(ids[:3]) and all(v["state"] == "PENDING" for v in states.values())


def test_outputs_listing_caps(tmp_path):
    from caesar_rest.ui import outputs

    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "in.fits").write_bytes(b"x")
    (tmp_path / "big_catalog.csv").write_text("id,x\n" + "".join(f"{i},{i * 2}\n" for i in range(1000)))
    for i in range(outputs.MAX_SHOWN + 2):
        (tmp_path / f"p{i:02d}.png").write_bytes(b"\x89PNG")
    listed, truncated = outputs.listing(tmp_path, 20)
    assert not truncated and "inputs/in.fits" not in [o.path for o in listed]
    table = next(o for o in listed if o.path == "big_catalog.csv")
    assert table.header == ["id", "x"] and len(table.rows) == 20 and table.more_rows
    assert sum(o.kind in ("image", "table") for o in listed) == outputs.MAX_SHOWN
    assert outputs.resolve(tmp_path, "inputs/in.fits") is None and outputs.resolve(tmp_path, "../x") is None
    assert outputs.resolve(tmp_path, "big_catalog.csv") == (tmp_path / "big_catalog.csv").resolve()


def test_cookie_secure_behind_tls(app):
    client = app.test_client()
    page = client.get("/ui/login", base_url="https://localhost")
    cookie = page.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
