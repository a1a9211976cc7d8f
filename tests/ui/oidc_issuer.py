"""A small OIDC issuer for the dashboard's sign-in tests: no issuer (Keycloak, Dex) is installed on this machine, so
this one stands in, doing what an issuer's authorize and token endpoints do: it checks the client, the redirect URI
and the PKCE verifier against the challenge, and signs RS256 tokens its JWKS (/certs) publishes. Its authorize
endpoint signs in whoever `user` says, at once."""
from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from ..support import free_port

AUDIENCE, CLIENT = "caesar-rest", "caesar-dashboard"


class Issuer:
    """authorize (the user 'signs in' as whoever the test says), token, certs."""

    def __init__(self, host: str = "127.0.0.1") -> None:
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

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)      # a port browsers load
        self.url = f"http://{host}:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
