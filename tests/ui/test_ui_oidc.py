"""The dashboard's OIDC sign-in (authorization code + PKCE S256, state, nonce) through the test client, against
the small issuer of oidc_issuer.py (no real issuer is installed here); test_ui_browser_oidc.py runs it in Chromium."""
from __future__ import annotations

import re
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from caesar_rest import create_app
from caesar_rest.db import dispose_all
from caesar_rest.errors import CaesarError

from ..support import embedded_settings
from .oidc_issuer import AUDIENCE, CLIENT, Issuer


@pytest.fixture(scope="module")
def issuer():
    found = Issuer()
    yield found
    found.server.shutdown()


def oidc_settings(root, issuer, **extra):
    """AUTH_MODE oidc with the dashboard's sign-in at this issuer."""
    return embedded_settings(root, AUTH_MODE="oidc", OIDC_ISSUER=issuer.url, OIDC_AUDIENCE=AUDIENCE,
                             OIDC_JWKS_URL=f"{issuer.url}/certs", OIDC_AUTHORIZATION_URL=f"{issuer.url}/authorize",
                             OIDC_TOKEN_URL=f"{issuer.url}/token", OIDC_CLIENT_ID=CLIENT, **extra)


@pytest.fixture
def app(tmp_path, issuer):
    app = create_app(oidc_settings(tmp_path / "var", issuer))
    yield app
    dispose_all()


def _csrf(html: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


def start(client, next_page="/ui/files"):
    page = client.get("/ui/login")
    assert page.status_code == 200 and 'id="oidc-login"' in page.text
    r = client.get("/ui/oidc/start", query_string={"next": next_page})
    assert r.status_code == 303
    flow_cookie = r.headers["Set-Cookie"]
    assert "SameSite=Lax" in flow_cookie and "HttpOnly" in flow_cookie and "Path=/ui/oidc/" in flow_cookie
    return r.headers["Location"]


def authorize(location: str) -> str:
    """What the browser does at the issuer: the issuer answers with the redirect back (its code and state)."""
    import urllib3

    answer = urllib3.request("GET", location, redirect=False)
    assert answer.status == 302
    back = urlsplit(answer.headers["Location"])
    return f"{back.path}?{back.query}"


def test_sign_in_with_pkce(app, issuer):
    client = app.test_client()
    location = start(client)
    asked = parse_qs(urlsplit(location).query)
    assert asked["code_challenge_method"] == ["S256"] and asked["client_id"] == [CLIENT]
    assert "openid" in asked["scope"][0].split()
    r = client.get(authorize(location))
    assert r.status_code == 200 and '<meta http-equiv="refresh" content="0; url=/ui/files">' in r.text, r.text
    assert any(c.startswith("caesar_ui=") and "SameSite=Strict" in c for c in r.headers.getlist("Set-Cookie"))
    page = client.get("/ui/files")
    assert page.status_code == 200 and 'id="user">carol<' in page.text and "(admin)" not in page.text
    verifier = issuer.token_requests[-1]["code_verifier"]
    assert len(verifier) >= 43 and verifier not in location          # only its hash went through the browser
    assert client.get("/ui/admin").status_code == 404


def test_admin_role_and_replayed_or_foreign_answers(app, issuer):
    client = app.test_client()
    issuer.roles = ["caesar-admin"]
    try:
        back = authorize(start(client))
        assert client.get(back).status_code == 200
        assert "(admin)" in client.get("/ui/jobs").text
    finally:
        issuer.roles = []
    # the same answer again: the flow cookie is gone (and the issuer's code used up)
    assert client.get(back).status_code == 401
    # an answer for another browser's sign-in (login CSRF): the state does not match this browser's flow
    other = app.test_client()
    theirs = authorize(start(other))
    mine = app.test_client()
    start(mine)
    r = mine.get(theirs)
    assert r.status_code == 400 and "does not belong" in r.text
    assert mine.get("/ui/jobs", headers={"Accept": "text/html"}).status_code == 302
    # the issuer's own refusal is shown
    start(mine)
    r = mine.get("/ui/oidc/callback?" + urlencode({"error": "access_denied", "error_description": "user said no",
                                                   "state": "x"}))
    assert r.status_code == 401 and "user said no" in r.text


def test_a_code_the_issuer_does_not_exchange(app, issuer):
    client = app.test_client()
    location = start(client)
    state = parse_qs(urlsplit(location).query)["state"][0]
    r = client.get("/ui/oidc/callback?" + urlencode({"code": "forged", "state": state}))
    assert r.status_code == 401 and "invalid_grant" in r.text
    assert client.get("/ui/jobs", headers={"Accept": "text/html"}).status_code == 302


def test_settings_come_together(tmp_path, issuer):
    settings = oidc_settings(tmp_path / "var", issuer)
    del settings["OIDC_TOKEN_URL"]
    with pytest.raises(CaesarError, match="OIDC_TOKEN_URL missing"):
        create_app(settings)
    dispose_all()
