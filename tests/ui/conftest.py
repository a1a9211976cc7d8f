"""Dashboard fixtures: the API and a worker as real processes (embedded default, token auth: alice, bob and the
admin root), and Debian's chromium through Playwright (no browser is downloaded)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from caesar_rest.auth import hash_token

from ..support import REPO, embedded_settings, start_api, start_worker

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789", "root": "root-token-0123456789"}
USERS = {name: {"tokens_sha256": [hash_token(token)], **({"admin": True} if name == "root" else {})}
         for name, token in TOKENS.items()}
#: Screenshots of each page (git-ignored).
ARTIFACTS = REPO / "tests" / "artifacts" / "ui"


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("ui")
    settings = embedded_settings(root / "var", AUTH_MODE="token", AUTH_USERS=USERS, STALE_AFTER=20,
                                TES_HOST_RUNTIME=True)
    api, base = start_api(settings, root / "api.log")
    worker = start_worker(settings, ["local"], root / "worker.log", concurrency=2)
    yield {"base": base, "root": root, "settings": settings}
    worker.stop()
    api.stop()


@pytest.fixture
def new_page(browser, ui_stack):
    """Pages of fresh browser contexts (one per user), each refusing any request elsewhere and failing the test on
    a script error or a CSP violation."""
    contexts = []
    ours = urlsplit(ui_stack["base"]).netloc

    def make():
        context = browser.new_context(accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.elsewhere, page.errors = [], []

        def route(r):
            if urlsplit(r.request.url).netloc != ours:
                page.elsewhere.append(r.request.url)
                r.abort()
            else:
                r.continue_()

        page.route("**/*", route)
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.on("console", lambda msg: page.errors.append(msg.text)
                if msg.type == "error" and "Content Security Policy" in msg.text else None)
        return page

    yield make
    for context in contexts:
        for page in context.pages:
            assert not page.elsewhere and not page.errors, (page.elsewhere, page.errors)
        context.close()


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
