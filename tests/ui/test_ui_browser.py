"""The dashboard end to end in headless Chromium against real API and worker processes: sign in, upload a FITS
image by drag and drop, run sfinder from the generated form with a changed threshold, watch it reach SUCCESS
without a reload, its preview and catalogue, the tarball; cancel a running sleeper; an out-of-range value; another
user's job; a form without its CSRF token. Screenshots of each page go to tests/artifacts/ui/."""
from __future__ import annotations

import base64
import csv
import io
import re
import tarfile

import requests
from playwright.sync_api import expect

from ..apps.fitsgen import make_image
from ..support import API
from .conftest import TOKENS, shot

#: sfinder at seedthr 35 on fitsgen's default image: the sources with peaks 40-100 (five of the eight).
SEEDTHR = 35
EXPECTED_ROWS = 5


def sign_in(page, base: str, user: str) -> None:
    page.goto(f"{base}/ui/")
    assert "/ui/login" in page.url
    page.fill("#user-name", user)
    page.fill("#secret", TOKENS[user])
    page.click("#login button[type=submit]")
    page.wait_for_url(f"{base}/ui/jobs")
    assert page.locator("#user").inner_text() == user


def drop_files(page, selector: str, files: dict[str, bytes]) -> None:
    """Drop files on an element as a user dragging them from the desktop would (a DataTransfer with File objects)."""
    encoded = {name: base64.b64encode(data).decode() for name, data in files.items()}
    transfer = page.evaluate_handle("""(files) => {
        const dt = new DataTransfer();
        for (const [name, b64] of Object.entries(files)) {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            dt.items.add(new File([bytes], name));
        }
        return dt; }""", encoded)
    page.dispatch_event(selector, "dragenter", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def pick_file(page, selector: str, name: str) -> None:
    value = page.eval_on_selector(selector, "(s, name) => Array.from(s.options)"
                                            ".find((o) => o.textContent.startsWith(name + ' ')).value", name)
    page.select_option(selector, value)


def job_count(base: str, user: str) -> int:
    r = requests.get(f"{base}{API}/jobs", headers={"Authorization": f"Bearer {TOKENS[user]}"}, timeout=10)
    return r.json()["total"]


def test_dashboard_end_to_end(new_page, ui_stack, tmp_path):
    base = ui_stack["base"]
    page = new_page()
    sign_in(page, base, "alice")
    shot(page, "01-jobs-empty")

    # ---- upload by drag and drop: the FITS image and a second file, a progress bar each
    image = make_image(tmp_path / "field.fits")
    page.goto(f"{base}/ui/files")
    with page.expect_navigation():      # the page reloads once every upload has ended
        drop_files(page, "#dropzone", {"field.fits": image.read_bytes(), "notes.txt": b"two files at once\n"})
    rows = page.locator("#files tr.file")
    assert rows.count() == 2
    assert "field.fits" in page.locator("#files").inner_text()
    assert str(image.stat().st_size) in page.locator("#files tr.file", has_text="field.fits").inner_text()
    shot(page, "02-files")

    # ---- sfinder through its generated form, a changed threshold
    page.goto(f"{base}/ui/apps")
    shot(page, "03-apps")
    page.click("#apps >> text=sfinder")
    assert page.locator("#in-seedthr").get_attribute("max") == "1000"
    assert page.locator("#group-background").get_attribute("open") is None        # advanced: folded
    shot(page, "04-sfinder-form")
    pick_file(page, "#in-inputfile", "field.fits")
    page.fill("#in-seedthr", str(SEEDTHR))
    page.click("#submit")
    page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f-]{36}$"))
    job_id = page.locator("#job-id").inner_text()
    page.evaluate("window.notReloaded = true")
    expect(page.locator("#state")).to_have_text("SUCCESS", timeout=180_000)
    assert page.evaluate("window.notReloaded") is True                             # no reload happened
    assert page.locator("#cancel").count() == 0
    preview = page.locator("img.preview")
    preview.wait_for()
    page.wait_for_function("() => document.querySelector('img.preview').complete")
    assert page.evaluate("document.querySelector('img.preview').naturalWidth") > 0
    catalogue = page.locator("table.catalogue tbody tr")
    assert catalogue.count() == EXPECTED_ROWS
    assert "DS9 region file" in page.locator("#output-files").inner_text()
    assert "SUCCESS" in page.locator("#timeline").inner_text()
    assert f"--seedthr {float(SEEDTHR)}" in page.locator("#metadata").inner_text()
    # the catalogue sorts by a column on a click (descending on the second)
    page.click("table.catalogue thead th:has-text('peak')")
    page.click("table.catalogue thead th:has-text('peak')")
    col = page.evaluate("Array.from(document.querySelector('table.catalogue thead tr').cells)"
                        ".findIndex((c) => c.textContent === 'peak')")
    peaks = [float(x) for x in page.eval_on_selector_all(
        "table.catalogue tbody tr", f"rows => rows.map(r => r.cells[{col}].textContent)")]
    assert peaks == sorted(peaks, reverse=True)
    shot(page, "05-job")

    with page.expect_download() as info:
        page.click("#tarball")
    archive = tmp_path / "job.tar.gz"
    info.value.save_as(archive)
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("_catalog.csv"))
        text = tar.extractfile(member).read().decode()
    assert len(list(csv.DictReader(io.StringIO(text)))) == EXPECTED_ROWS

    page.goto(f"{base}/ui/jobs")
    assert job_id[:8] in page.locator("#jobs").inner_text()
    assert "SUCCESS" in page.locator(f"#jobs tr[data-id='{job_id}']").inner_text()
    shot(page, "06-jobs")

    # ---- an out-of-range value: the error beside its input, nothing created
    before = job_count(base, "alice")
    page.goto(f"{base}/ui/apps/sfinder")
    # a file uploaded in place, from the form itself, becomes the option's choice
    page.set_input_files("#field-inputfile input.upload-in-place",
                         files=[{"name": "inplace.fits", "mimeType": "application/fits", "buffer": image.read_bytes()}])
    expect(page.locator("#in-inputfile option:checked")).to_contain_text("inplace.fits")
    page.fill("#in-seedthr", "5000")
    page.click("#submit")
    error = page.locator("#field-seedthr #error-seedthr")
    assert "must be <= 1000" in error.inner_text()
    shot(page, "07-form-error")
    assert job_count(base, "alice") == before

    # ---- a form without its CSRF token is refused
    page.evaluate("document.querySelector('#job-form input[name=csrf_token]').remove()")
    page.fill("#in-seedthr", "6")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("#submit")
    assert answer.value.status == 403
    assert "CSRF token" in page.locator("#message").inner_text()
    assert job_count(base, "alice") == before

    # ---- a running sleeper canceled after a confirmation
    page.goto(f"{base}/ui/apps/sleeper")
    page.fill("#in-seconds", "120")
    page.fill("#in-message", "tail-me-live")
    page.click("#submit")
    page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f-]{36}$"))
    sleeper = page.locator("#job-id").inner_text()
    expect(page.locator("#state")).to_have_text("RUNNING", timeout=60_000)
    expect(page.locator("#stdout")).to_contain_text("tail-me-live", timeout=30_000)     # the log tail, live
    asked = []
    page.once("dialog", lambda d: (asked.append(d.message), d.accept()))
    page.click("#cancel button")
    page.wait_for_url(re.compile(rf"/ui/jobs/{sleeper}\?notice="))
    assert asked and sleeper[:8] in asked[0]
    expect(page.locator("#state")).to_have_text("CANCELED", timeout=60_000)
    shot(page, "08-canceled")

    # ---- an OGC job and a TES task show in the same table and open as jobs
    alice = {"Authorization": f"Bearer {TOKENS['alice']}"}
    r = requests.post(f"{base}/ogcapi/processes/sleeper/execution", json={"inputs": {"seconds": 0}},
                      headers={**alice, "Prefer": "respond-async"}, timeout=30)
    assert r.status_code == 201, r.text
    ogc_job = r.json()["jobID"]
    r = requests.post(f"{base}/ga4gh/tes/v1/tasks", headers=alice, timeout=30, json={
        "name": "ui-tes", "executors": [{"image": "debian:stable-slim", "command": ["echo", "from-tes"]}]})
    assert r.status_code == 200, r.text
    tes_task = r.json()["id"]
    page.goto(f"{base}/ui/jobs")
    for other_id in (ogc_job, tes_task):
        expect(page.locator(f"#jobs tr[data-id='{other_id}'] td.state")).to_have_text("SUCCESS", timeout=60_000)
    assert "tes" in page.locator(f"#jobs tr[data-id='{tes_task}']").inner_text()
    page.goto(f"{base}/ui/jobs/{tes_task}")
    expect(page.locator("#stdout")).to_contain_text("from-tes")
    assert page.goto(f"{base}/ui/jobs?kind=tes").ok and page.locator("#jobs tr.job").count() == 1

    # ---- another user's job is a 404
    other = new_page()
    sign_in(other, base, "bob")
    assert other.goto(f"{base}/ui/jobs/{job_id}").status == 404
    assert other.goto(f"{base}/ui/jobs/{job_id}/tarball").status == 404
    other.goto(f"{base}/ui/jobs")
    assert job_id[:8] not in other.locator("#jobs").inner_text()

    # ---- the admin sees everyone's jobs, the queues, the health
    admin = new_page()
    sign_in(admin, base, "root")
    assert job_id[:8] in admin.locator("#jobs").inner_text()
    admin.goto(f"{base}/ui/admin")
    assert "local" in admin.locator("#queues").inner_text()
    assert "alice" in admin.locator("#counters").inner_text()
    shot(admin, "09-admin")
