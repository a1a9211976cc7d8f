"""The dashboard's OIDC sign-in in headless Chromium, with the issuer on another site (localhost against the
dashboard's 127.0.0.1): the flow cookie (SameSite=Lax) comes back with the issuer's redirect, and the signed-in
page is reached by the sign-in page's own move (a meta refresh), same-site for the Strict session cookie. The
issuer is oidc_issuer.py's (no real one is installed here); the API is a real process."""
from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from ..support import embedded_settings, start_api
from .conftest import shot
from .oidc_issuer import AUDIENCE, CLIENT, Issuer


@pytest.fixture(scope="module")
def oidc_stack(tmp_path_factory):
    issuer = Issuer(host="localhost")
    root = tmp_path_factory.mktemp("ui-oidc")
    settings = embedded_settings(root / "var", AUTH_MODE="oidc", OIDC_ISSUER=issuer.url, OIDC_AUDIENCE=AUDIENCE,
                                 OIDC_JWKS_URL=f"{issuer.url}/certs",
                                 OIDC_AUTHORIZATION_URL=f"{issuer.url}/authorize",
                                 OIDC_TOKEN_URL=f"{issuer.url}/token", OIDC_CLIENT_ID=CLIENT)
    api, base = start_api(settings, root / "api.log")
    yield {"base": base, "issuer": issuer}
    api.stop()
    issuer.server.shutdown()


def test_sign_in_across_sites(browser, oidc_stack):
    base, issuer = oidc_stack["base"], oidc_stack["issuer"]
    allowed = {urlsplit(base).netloc, urlsplit(issuer.url).netloc}
    context = browser.new_context()
    page = context.new_page()
    elsewhere, errors = [], []
    page.route("**/*", lambda r: r.continue_() if urlsplit(r.request.url).netloc in allowed
               else (elsewhere.append(r.request.url), r.abort()))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    cookies_sent: dict[str, str] = {}
    page.on("request", lambda r: cookies_sent.setdefault(urlsplit(r.url).path, r.headers.get("cookie") or ""))
    try:
        page.goto(f"{base}/ui/files")
        assert "/ui/login" in page.url
        shot(page, "10-oidc-login")
        page.click("#oidc-login")   # a link: forms may only go to this site (form-action 'self')
        page.wait_for_url(f"{base}/ui/files")
        # the issuer's redirect back carried the (Lax) flow cookie; whether a browser sends the Strict session
        # cookie along a chain another site redirected varies, hence the sign-in page that moves on by itself
        assert "caesar_ui_oidc=" in cookies_sent["/ui/oidc/callback"]
        assert page.locator("#user").inner_text() == "carol"
        assert page.locator("h1").inner_text() == "Files"
        assert page.goto(f"{base}/ui/admin").status == 404         # not an admin
        assert not elsewhere and not errors
    finally:
        context.close()
