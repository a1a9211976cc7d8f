"""The dashboard's OIDC sign-in (authorization code + PKCE S256, state, nonce) against a small issuer run here as
an HTTP server: no OIDC issuer (Keycloak, Dex) is installed on this machine, so this one stands in for it, doing
what an issuer's authorize and token endpoints do (it checks the client, the redirect URI and the PKCE verifier
against the challenge, and signs RS256 tokens its JWKS publishes)."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from caesar_rest import create_app
from caesar_rest.db import dispose_all
from caesar_rest.errors import CaesarError

from ..support import embedded_settings

AUDIENCE, CLIENT = "caesar-rest", "caesar-dashboard"


class Issuer:
    """authorize (the user 'signs in' as whoever the test says), token, certs."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.user = "carol"
        self.roles: list[str] = []
        self.codes: dict[str, dict] = {}
        self.token_requests: list[dict] = []
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                parts = urlsplit(self.path)
                if parts.path == "/certs":
                    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(issuer.key.public_key()))
                    self._send(200, json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]})
                               .encode(), [("Content-Type", "application/json")])
                    return
                q = {k: v[0] for k, v in parse_qs(parts.query).items()}
                code = f"code-{len(issuer.codes)}"
                issuer.codes[code] = q
                back = f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}"
                self._send(302, headers=[("Location", back)])

            def do_POST(self):
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                        .items()}
                issuer.token_requests.append(form)
                asked = issuer.codes.pop(form.get("code", ""), None)
                challenge = base64.urlsafe_b64encode(hashlib.sha256(form.get("code_verifier", "").encode())
                                                     .digest()).rstrip(b"=").decode()
                if (asked is None or asked["code_challenge_method"] != "S256" or asked["code_challenge"] != challenge
                        or form["redirect_uri"] != asked["redirect_uri"] or form["client_id"] != CLIENT):
                    self._send(400, b'{"error": "invalid_grant"}', [("Content-Type", "application/json")])
                    return
                now = int(time.time())
                common = {"iss": issuer.url, "exp": now + 300, "iat": now, "preferred_username": issuer.user}
                access = jwt.encode({**common, "aud": AUDIENCE, "roles": issuer.roles}, issuer.key, "RS256",
                                    headers={"kid": "k1"})
                ident = jwt.encode({**common, "aud": CLIENT, "nonce": asked["nonce"]}, issuer.key, "RS256",
                                   headers={"kid": "k1"})
                self._send(200, json.dumps({"access_token": access, "id_token": ident, "token_type": "Bearer"})
                           .encode(), [("Content-Type", "application/json")])

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def issuer():
    found = Issuer()
    yield found
    found.server.shutdown()


def oidc_settings(root, issuer, **extra):
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
    r = client.post("/ui/oidc/start", data={"csrf_token": _csrf(page.text), "next": next_page})
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
    assert r.status_code == 303 and r.headers["Location"] == "/ui/files", r.text
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
        assert client.get(back).status_code == 303
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
