"""Dashboard sign-in with the configured OIDC issuer: the authorization-code flow with PKCE (S256), a state and a
nonce. The flow's secrets wait in a short-lived signed cookie of their own (SameSite=Lax, path /ui/oidc/: the
issuer's redirect back is a cross-site navigation, which a Strict cookie would not follow). The access token the
issuer returns is judged by the API's own bearer check (caesar_rest.auth: issuer, audience, signature, user name
and roles), the ID token's nonce against the flow's; then the dashboard's session opens as for the other modes."""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from flask import current_app, g, redirect, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer

from ..auth import _by_oidc, _jwks
from ..errors import CaesarError, Unauthorized
from . import blp, page, session

FLOW_COOKIE = "caesar_ui_oidc"
FLOW_SECONDS = 600
NEEDED = ("OIDC_AUTHORIZATION_URL", "OIDC_TOKEN_URL", "OIDC_CLIENT_ID")


def configured(cfg: Mapping[str, Any]) -> bool:
    return all(cfg.get(k) for k in NEEDED)


def check_settings(cfg: Mapping[str, Any]) -> None:
    """At start: the dashboard's OIDC settings come together, or not at all."""
    given = [k for k in NEEDED if cfg.get(k)]
    if given and len(given) < len(NEEDED):
        missing = ", ".join(k for k in NEEDED if not cfg.get(k))
        raise CaesarError(f"The dashboard's OIDC sign-in needs {', '.join(NEEDED)}; {missing} missing")
    if given and cfg.get("AUTH_MODE") != "oidc":
        raise CaesarError("OIDC_AUTHORIZATION_URL is set but AUTH_MODE is not oidc")
    if given and "openid" not in str(cfg.get("OIDC_SCOPES", "")).split():
        raise CaesarError("OIDC_SCOPES must include openid")


def _flow() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(session._secret(), salt="caesar-ui-oidc")


def _redirect_uri() -> str:
    public = current_app.config.get("PUBLIC_URL")
    if public:
        return str(public).rstrip("/") + url_for("ui.oidc_callback")
    return url_for("ui.oidc_callback", _external=True)


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@blp.route("/oidc/start")
def oidc_start():
    """A link, not a form: the page's CSP lets forms go to this site only (form-action 'self', redirects too), and
    starting a sign-in changes nothing here but the browser's flow cookie (its state stops a forged answer)."""
    cfg = current_app.config
    if cfg["AUTH_MODE"] != "oidc" or not configured(cfg):
        raise Unauthorized("OIDC sign-in is not configured on this service")
    from .pages import _safe_next

    verifier, state, nonce = secrets.token_urlsafe(64), secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    query = urlencode({"response_type": "code", "client_id": cfg["OIDC_CLIENT_ID"], "redirect_uri": _redirect_uri(),
                       "scope": cfg["OIDC_SCOPES"], "state": state, "nonce": nonce,
                       "code_challenge": _s256(verifier), "code_challenge_method": "S256"})
    sep = "&" if "?" in cfg["OIDC_AUTHORIZATION_URL"] else "?"
    response = redirect(f"{cfg['OIDC_AUTHORIZATION_URL']}{sep}{query}", code=303)
    response.set_cookie(FLOW_COOKIE, _flow().dumps({"s": state, "v": verifier, "n": nonce,
                                                    "next": _safe_next(request.args.get("next"))}),
                        max_age=FLOW_SECONDS, httponly=True, samesite="Lax", path="/ui/oidc/",
                        secure=_redirect_uri().startswith("https:"))
    return response


def _refused(message: str, status: int = 401):
    response = current_app.make_response(page("login.html", status, error=message, name="", next="/ui/jobs",
                                              oidc=configured(current_app.config)))
    response.delete_cookie(FLOW_COOKIE, path="/ui/oidc/")
    return response


@blp.route("/oidc/callback")
def oidc_callback():
    try:
        flow = _flow().loads(request.cookies.get(FLOW_COOKIE, ""), max_age=FLOW_SECONDS)
    except BadSignature:
        return _refused("The sign-in took too long or was not started from this browser; try again")
    if request.args.get("error"):
        why = request.args.get("error_description") or request.args["error"]
        return _refused(f"The issuer refused the sign-in: {why}")
    if not secrets.compare_digest(request.args.get("state", ""), flow["s"]) or not request.args.get("code"):
        return _refused("The sign-in answer does not belong to the sign-in this browser started; try again", 400)
    try:
        tokens = _exchange(request.args["code"], flow["v"])
        user = _by_oidc(str(tokens.get("access_token") or ""))
        _check_nonce(tokens.get("id_token"), flow["n"])
    except Unauthorized as exc:
        return _refused(exc.message)
    session.open_session(user.name, "oidc", admin=user.admin)
    g.caesar_user = user
    # A page that moves on by itself rather than a redirect: this request came from the issuer's site, and a
    # browser does not send the SameSite=Strict session cookie along a redirect chain another site started; the
    # page's own navigation (a meta refresh, no script) is same-site and carries it.
    response = current_app.make_response(page("signed_in.html", next=flow["next"]))
    response.delete_cookie(FLOW_COOKIE, path="/ui/oidc/")
    return response


def _exchange(code: str, verifier: str) -> dict[str, Any]:
    """The code and the PKCE verifier for the tokens, at the token endpoint."""
    import urllib3

    cfg = current_app.config
    fields = {"grant_type": "authorization_code", "code": code, "redirect_uri": _redirect_uri(),
              "client_id": cfg["OIDC_CLIENT_ID"], "code_verifier": verifier}
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if cfg.get("OIDC_CLIENT_SECRET"):
        headers.update(urllib3.make_headers(basic_auth=f"{cfg['OIDC_CLIENT_ID']}:{cfg['OIDC_CLIENT_SECRET']}"))
    try:
        answer = urllib3.request("POST", cfg["OIDC_TOKEN_URL"], body=urlencode(fields), headers=headers,
                                 timeout=urllib3.Timeout(total=10), retries=False, redirect=False)
    except urllib3.exceptions.HTTPError as exc:
        raise Unauthorized(f"The issuer's token endpoint did not answer ({exc.__class__.__name__})") from None
    try:
        body = json.loads(answer.data or b"{}")
    except ValueError:
        body = {}
    if answer.status != 200 or not isinstance(body, dict) or not body.get("access_token"):
        why = body.get("error_description") or body.get("error") if isinstance(body, dict) else None
        raise Unauthorized(f"The issuer did not give tokens for the sign-in code (HTTP {answer.status}"
                           f"{': ' + str(why) if why else ''})")
    return body


def _check_nonce(id_token: Any, nonce: str) -> None:
    import jwt

    if not isinstance(id_token, str) or not id_token:
        raise Unauthorized("The issuer gave no ID token (OIDC_SCOPES needs openid)")
    cfg = current_app.config
    try:
        claims = jwt.decode(id_token, key=_jwks.key_for(cfg["OIDC_JWKS_URL"], id_token),
                            algorithms=list(cfg["OIDC_ALGORITHMS"]), audience=cfg["OIDC_CLIENT_ID"],
                            issuer=cfg["OIDC_ISSUER"], leeway=int(cfg["OIDC_LEEWAY"]))
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"The ID token is invalid ({exc.__class__.__name__})") from None
    if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
        raise Unauthorized("The ID token's nonce is not this sign-in's")
