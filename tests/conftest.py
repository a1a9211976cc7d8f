"""Fixtures: an embedded-default app and client (Flask tutorial style), and the production stack's database."""
from __future__ import annotations

import pytest

from caesar_rest import create_app
from caesar_rest.db import dispose_all

from .support import create_pg_database, drop_pg_database, embedded_settings

# The real peers' fixtures (Podman, moto, HTCondor, Pulsar, Slurm and the stacks on them), one module each. Registered
# here, the root conftest (pytest takes pytest_plugins nowhere else), because tests/api and tests/tes use them too.
pytest_plugins = [
    "tests.backends.batch_fixtures",
    "tests.backends.container_fixtures",
    "tests.backends.htcondor_fixtures",
    "tests.backends.pulsar_fixtures",
    "tests.backends.security_fixtures",
    "tests.backends.slurm_fixtures",
]


@pytest.fixture
def settings(tmp_path):
    # TES tasks validate and run here as host-runtime tasks (off by default in the service: an operator's choice).
    return {**embedded_settings(tmp_path / "var"), "TES_HOST_RUNTIME": True}


@pytest.fixture
def app(settings):
    app = create_app(settings)
    yield app
    dispose_all()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database on the local server for this test session, dropped at the end."""
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's, /usr/bin/chromium: Playwright's own download cannot run here), driven by
    Playwright, for the tests of HTML pages (tests/ogc, tests/ui)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()
