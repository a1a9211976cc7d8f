"""The HTML pages of /ogcapi render in headless Chromium (Debian's chromium through Playwright; no browser is
downloaded): landing page, processes, a process with its inputs, jobs, a job; nothing is fetched from elsewhere and
no script error happens."""
from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from .conftest import TOKENS
from .ogc_support import wait_status


@pytest.fixture
def page(browser, ogc_stack):
    context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {TOKENS['alice']}"})
    page = context.new_page()
    ours = urlsplit(ogc_stack["base"]).netloc
    page.elsewhere = []
    page.errors = []

    def route(r):
        if urlsplit(r.request.url).netloc != ours:
            page.elsewhere.append(r.request.url)
            r.abort()
        else:
            r.continue_()

    page.route("**/*", route)
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    yield page
    assert not page.elsewhere and not page.errors
    context.close()


def test_pages_render(page, ogc_stack, alice):
    ogc = ogc_stack["ogc"]
    r = alice.post(f"{ogc}/processes/sleeper/execution", json={"inputs": {"seconds": 0, "message": "html"}},
                   headers={"Prefer": "respond-async"}, timeout=30)
    job_id = r.json()["jobID"]
    wait_status(alice, ogc, job_id)

    assert page.goto(f"{ogc}/").status == 200        # a browser's Accept prefers HTML: no ?f needed
    assert page.locator("#title").inner_text().startswith("caesar-rest")
    page.click("text=the processes")
    assert page.url.startswith(f"{ogc}/processes")
    rows = page.locator("#processes tr.process")
    assert rows.count() >= 4 and "sfinder" in page.locator("#processes").inner_text()

    page.click("#processes >> text=sfinder")
    assert page.locator("#process").inner_text().startswith("sfinder")
    inputs = page.locator("#inputs").inner_text()
    assert "seedthr" in inputs and "inputfile" in inputs and "no-mpi" not in inputs
    assert "application/fits" in inputs and "catalog" in page.locator("#outputs").inner_text()

    assert page.goto(f"{ogc}/jobs?f=html").status == 200
    assert job_id in page.locator("#jobs").inner_text()
    page.click(f"text={job_id}")
    assert page.locator("#job").inner_text() == job_id
    assert page.locator("#status").inner_text() == "successful"

    assert page.goto(f"{ogc}/conformance?f=html").status == 200
    assert "conf/core" in page.locator("#conformance").inner_text()
    assert page.goto(f"{ogc}/jobs/{job_id}/results?f=html").status == 200
    assert "html" in page.locator("#results").inner_text()
    missing = page.goto(f"{ogc}/jobs/00000000-0000-0000-0000-000000000000?f=html")
    assert missing.status == 404 and "no-such-job" in page.locator("body").inner_text()


def test_format_selection(ogc_stack, alice):
    ogc = ogc_stack["ogc"]
    assert alice.get(f"{ogc}/processes", headers={"Accept": "text/html"}).headers["Content-Type"].startswith(
        "text/html")
    assert alice.get(f"{ogc}/processes", headers={"Accept": "*/*"}).headers["Content-Type"] == "application/json"
    assert alice.get(f"{ogc}/processes?f=json", headers={"Accept": "text/html"}).headers["Content-Type"] == (
        "application/json")
    assert alice.get(f"{ogc}/processes?f=html").headers["Content-Type"].startswith("text/html")
    swagger = alice.get(f"{ogc}/api?f=html", allow_redirects=False)
    assert swagger.status_code == 302 and swagger.headers["Location"] == ogc_stack["base"] + "/swagger"
    bad = alice.get(f"{ogc}/processes?f=xml")
    assert bad.status_code == 400 and bad.json()["parameter"] == "f"
