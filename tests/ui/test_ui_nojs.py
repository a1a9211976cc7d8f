"""The dashboard with JavaScript off, in headless Chromium against real API and worker processes: every page
still works (sign in, upload one file by the form, run sfinder from its form, the job's page on reload with its
outputs, a cancel asked on a page of its own)."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from ..apps.fitsgen import make_image
from .conftest import TOKENS, shot


def test_without_javascript(browser, ui_stack, tmp_path):
    base = ui_stack["base"]
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(f"{base}/ui/")
        page.fill("#user-name", "bob")
        page.fill("#secret", TOKENS["bob"])
        page.click("#login button[type=submit]")
        page.wait_for_url(f"{base}/ui/jobs")

        page.goto(f"{base}/ui/files")
        page.set_input_files("#file-input", str(make_image(tmp_path / "nojs.fits")))
        page.fill("#tag-input", "no-script")
        page.click("#upload-form button[type=submit]")
        expect(page.locator("#notice")).to_have_text("Uploaded nojs.fits")
        assert "no-script" in page.locator("#files tr.file", has_text="nojs.fits").inner_text()

        page.goto(f"{base}/ui/apps/sfinder")
        value = page.eval_on_selector("#in-inputfile", "s => Array.from(s.options)"
                                      ".find((o) => o.textContent.startsWith('nojs.fits ')).value")
        page.select_option("#in-inputfile", value)
        page.click("#submit")
        page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f-]{36}$"))
        for _ in range(120):            # no script: the state shows on reload
            if page.locator("#state").inner_text() == "SUCCESS":
                break
            page.wait_for_timeout(500)
            page.reload()
        assert page.locator("#state").inner_text() == "SUCCESS"
        assert page.locator("table.catalogue tbody tr").count() == 8         # the default threshold finds all 8
        shot(page, "11-job-no-script")

        page.goto(f"{base}/ui/apps/sleeper")
        page.fill("#in-seconds", "120")
        page.click("#submit")
        page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f-]{36}$"))
        page.click("#cancel button")
        expect(page.locator("#cancel-confirm")).to_be_visible()            # asked on a page of its own
        shot(page, "12-cancel-confirm")
        page.click("#cancel-confirm button")
        expect(page.locator("#notice")).to_contain_text("ancel")
        for _ in range(60):
            if page.locator("#state").inner_text() == "CANCELED":
                break
            page.wait_for_timeout(500)
            page.reload()
        assert page.locator("#state").inner_text() == "CANCELED"
    finally:
        context.close()
