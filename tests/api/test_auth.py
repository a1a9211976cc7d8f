"""Authentication modes, per-user isolation, admins, limits; OIDC against a local JWKS server with real RSA keys."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.security import generate_password_hash

from caesar_rest import create_app
from caesar_rest.auth import hash_token
from caesar_rest.errors import CaesarError

from ..support import API

TOKENS = {"alice": "alice-secret-token-1", "bob": "bob-secret-token-2", "root": "admin-secret-token-3"}
USERS = {"alice": {"tokens_sha256": [hash_token(TOKENS["alice"])],
                   "password_hash": generate_password_hash("wonderland")},
         "bob": {"tokens_sha256": [hash_token(TOKENS["bob"])], "max_active_jobs": 2, "max_stored_bytes": 1000},
         "root": {"tokens_sha256": [hash_token(TOKENS["root"])], "admin": True}}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def put(client, headers, content=b"data", name="a.txt"):
    return client.post(f"{API}/upload", data={"file": (io.BytesIO(content), name)},
                       content_type="multipart/form-data", headers=headers)


@pytest.fixture
def token_client(tmp_path):
    return create_app({"ROOT": str(tmp_path / "var"), "AUTH_MODE": "token", "AUTH_USERS": USERS}).test_client()


def test_token_mode_requires_a_token(token_client):
    r = token_client.get(f"{API}/fileids")
    assert r.status_code == 401 and "Bearer" in r.get_json()["message"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = token_client.get(f"{API}/fileids", headers=bearer("not-a-token"))
    assert r.status_code == 401 and r.get_json()["message"] == "The credentials were not accepted"
    assert token_client.get(f"{API}/fileids", headers=bearer(TOKENS["alice"])).status_code == 200
    assert token_client.get("/health").status_code in (200, 503)          # public


def test_users_see_only_their_own_files_and_jobs(token_client):
    a, b, admin = bearer(TOKENS["alice"]), bearer(TOKENS["bob"]), bearer(TOKENS["root"])
    fa = put(token_client, a).get_json()
    assert "/alice/" in fa["path"] and fa["owner"] == "alice"
    ja = token_client.post(f"{API}/job", json={"app": "checksum", "job_inputs": {"inputfile": fa["uuid"]}},
                           headers=a).get_json()["job_id"]
    missing_file = token_client.get(f"{API}/download-id/{'0' * 32}", headers=b)
    for r in (token_client.get(f"{API}/download-id/{fa['uuid']}", headers=b),
              token_client.delete(f"{API}/delete/{fa['uuid']}", headers=b)):
        assert r.status_code == 404
        assert r.get_json()["message"].replace(fa["uuid"], "0" * 32) == missing_file.get_json()["message"]
    for path in ("status", "output", "logs", "metadata", "cancel"):
        r = token_client.get(f"{API}/job/{ja}/{path}", headers=b)
        assert r.status_code == 404 and r.get_json()["message"] == f"Job {ja} not found"
    assert token_client.get(f"{API}/fileids", headers=b).get_json() == []
    assert token_client.get(f"{API}/jobs", headers=b).get_json()["total"] == 0
    # bob cannot use alice's file as an input, by uuid or by path
    for ref in (fa["uuid"], fa["path"]):
        r = token_client.post(f"{API}/job", json={"app": "checksum", "job_inputs": {"inputfile": ref}}, headers=b)
        assert r.status_code == 400
    # the admin sees and cancels everything
    assert token_client.get(f"{API}/jobs", headers=admin).get_json()["total"] == 1
    assert token_client.get(f"{API}/download-id/{fa['uuid']}", headers=admin).status_code == 200
    assert token_client.post(f"{API}/job/{ja}/cancel", headers=admin).get_json()["state"] == "CANCELED"


def test_limits_on_active_jobs_and_stored_bytes(token_client):
    b = bearer(TOKENS["bob"])
    for _ in range(2):
        assert token_client.post(f"{API}/job", json={"app": "sleeper"}, headers=b).status_code == 202
    r = token_client.post(f"{API}/job", json={"app": "sleeper"}, headers=b)
    assert r.status_code == 429 and "2 queued or running" in r.get_json()["message"]
    assert put(token_client, b, b"x" * 600).status_code == 200
    r = put(token_client, b, b"x" * 600)
    assert r.status_code == 507 and "quota of 1000" in r.get_json()["message"]
    assert len(token_client.get(f"{API}/fileids", headers=b).get_json()) == 1


def test_basic_mode(tmp_path):
    client = create_app({"ROOT": str(tmp_path / "var"), "AUTH_MODE": "basic", "AUTH_USERS": USERS}).test_client()
    r = client.get(f"{API}/jobs")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get(f"{API}/jobs", headers=basic("alice", "wonderland")).status_code == 200
    assert client.get(f"{API}/jobs", headers=basic("alice", "wrong")).status_code == 401
    assert client.get(f"{API}/jobs", headers=basic("nobody", "wonderland")).status_code == 401
    assert client.get(f"{API}/jobs", headers={"Authorization": "Basic !!!"}).status_code == 401


def test_secrets_never_reach_logs_or_metadata(tmp_path, caplog):
    app = create_app({"ROOT": str(tmp_path / "var"), "AUTH_MODE": "token", "AUTH_USERS": USERS})
    client = app.test_client()
    caplog.set_level("DEBUG")
    h = bearer(TOKENS["alice"])
    f = put(client, h).get_json()
    job = client.post(f"{API}/job", json={"app": "checksum", "job_inputs": {"inputfile": f["uuid"]}},
                      headers=h).get_json()
    meta = client.get(f"{API}/job/{job['job_id']}/metadata", headers=h).get_data(as_text=True)
    client.get(f"{API}/jobs", headers=bearer("wrong-" + TOKENS["bob"]))
    for secret in TOKENS.values():
        assert secret not in meta and secret not in caplog.text


def test_bad_auth_settings_fail_at_start(tmp_path):
    with pytest.raises(CaesarError, match="AUTH_MODE"):
        create_app({"ROOT": str(tmp_path), "AUTH_MODE": "magic"})
    with pytest.raises(CaesarError, match="OIDC_ISSUER"):
        create_app({"ROOT": str(tmp_path), "AUTH_MODE": "oidc"})
    with pytest.raises(CaesarError, match="never 'none'"):
        create_app({"ROOT": str(tmp_path), "AUTH_MODE": "oidc", "OIDC_ISSUER": "i", "OIDC_AUDIENCE": "a",
                    "OIDC_JWKS_URL": "http://x", "OIDC_ALGORITHMS": ["none"]})


# ---- OIDC ------------------------------------------------------------------------------------------------

ISSUER, AUDIENCE = "https://idp.example.test/realms/sci", "caesar-rest"


@pytest.fixture(scope="module")
def keys():
    return {"good": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "evil": rsa.generate_private_key(public_exponent=65537, key_size=2048)}


@pytest.fixture(scope="module")
def jwks_url(keys):
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys["good"].public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/certs"
    server.shutdown()


@pytest.fixture
def oidc_client(tmp_path, jwks_url):
    return create_app({"ROOT": str(tmp_path / "var"), "AUTH_MODE": "oidc", "OIDC_ISSUER": ISSUER,
                       "OIDC_AUDIENCE": AUDIENCE, "OIDC_JWKS_URL": jwks_url}).test_client()


def make_token(keys, key="good", kid="k1", alg="RS256", **claims):
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "iat": now, "preferred_username": "carol", **claims}
    return jwt.encode(payload, keys[key], algorithm=alg, headers={"kid": kid})


def test_oidc_valid_token(oidc_client, keys):
    r = oidc_client.post(f"{API}/job", json={"app": "sleeper"}, headers=bearer(make_token(keys)))
    assert r.status_code == 202
    meta = oidc_client.get(f"{API}/job/{r.get_json()['job_id']}/metadata", headers=bearer(make_token(keys))).get_json()
    assert meta["owner"] == "carol"
    other = make_token(keys, preferred_username="dave")
    assert oidc_client.get(f"{API}/jobs", headers=bearer(other)).get_json()["total"] == 0
    admin = make_token(keys, preferred_username="erin", roles=["caesar-admin"])
    assert oidc_client.get(f"{API}/jobs", headers=bearer(admin)).get_json()["total"] == 1


def unsigned(**claims) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "preferred_username": "carol", **claims}
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f"{enc({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{enc(payload)}."


@pytest.mark.parametrize("make, words", [
    (lambda k: make_token(k, exp=int(time.time()) - 3600), "expired"),
    (lambda k: make_token(k, iss="https://evil.example.test"), "issuer"),
    (lambda k: make_token(k, aud="another-service"), "audience"),
    (lambda k: make_token(k, key="evil"), "invalid"),
    (lambda k: make_token(k, kid="unknown-kid"), "signing key"),
    (lambda k: unsigned(), "invalid"),
    (lambda k: make_token(k, preferred_username="../../etc"), "claim"),
    (lambda k: "not.a.jwt", "invalid"),
])
def test_oidc_rejects_bad_tokens(oidc_client, keys, make, words):
    r = oidc_client.get(f"{API}/jobs", headers=bearer(make(keys)))
    assert r.status_code == 401 and words in r.get_json()["message"]
