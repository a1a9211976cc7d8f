"""The dashboard's resumable uploads in headless Chromium (tus-js-client against the server's tus views): a 48 MiB
upload cut off by a reload of the page part way through, then the same file chosen again, which goes on from the
server's offset into the same upload and ends in a file whose sha256 is the source's."""
from __future__ import annotations

import hashlib
import os
import re
import time

from sqlalchemy import select

from caesar_rest.db import session_scope
from caesar_rest.models import File, Upload

from .test_ui_browser import sign_in

MiB = 1024 * 1024
CHUNK = 16 * MiB          # the page's chunk size (caesar_rest/ui/files.py CHUNK_BYTES)


def database(settings) -> str:
    return settings.get("DATABASE_URL") or f"sqlite:///{settings['ROOT']}/caesar.db"


def uploads_of(settings, owner: str) -> list[Upload]:
    with session_scope(database(settings)) as s:
        return list(s.scalars(select(Upload).where(Upload.owner == owner)))


def test_an_upload_cut_by_a_reload_resumes_when_the_file_is_chosen_again(new_page, ui_stack, tmp_path):
    base, settings = ui_stack["base"], ui_stack["settings"]
    source = tmp_path / "survey.fits"
    source.write_bytes(os.urandom(3 * CHUNK))
    want = hashlib.sha256(source.read_bytes()).hexdigest()
    page = new_page()
    sign_in(page, base, "bob")
    offsets: list[int] = []

    def slow_chunks(route) -> None:
        """A slow link: each chunk waits a while before it goes (the other tus requests go at once)."""
        if route.request.method == "PATCH":
            offsets.append(int(route.request.headers["upload-offset"]))
            time.sleep(1.0)
        route.continue_()

    page.route(re.compile(r".*/ui/files/uploads/[0-9a-f]{32}$"), slow_chunks)
    page.goto(f"{base}/ui/files")
    page.set_input_files("#file-input", str(source))
    page.click("#upload-form button[type=submit]")
    # Playwright's sync API runs the route handler only while the test is in one of its calls: wait in them.
    deadline = time.monotonic() + 60
    while not any(u.offset >= CHUNK for u in uploads_of(settings, "bob")):
        assert time.monotonic() < deadline, "no chunk stored in 60 s"
        page.wait_for_timeout(200)
    page.goto(f"{base}/ui/files")                   # the page goes away mid-upload
    [cut] = uploads_of(settings, "bob")
    assert CHUNK <= cut.offset < 3 * CHUNK and cut.completed_at is None
    offsets.clear()
    page.set_input_files("#file-input", str(source))
    with page.expect_navigation(timeout=90_000):    # the page reloads once the upload has ended
        page.click("#upload-form button[type=submit]")
        page.wait_for_selector("#progress li.upload.resumed")
    assert offsets and offsets[0] == cut.offset      # its first chunk went where the server stood, not at 0
    [done] = uploads_of(settings, "bob")
    assert done.id == cut.id and done.completed_at is not None
    with session_scope(database(settings)) as s:
        record = s.get(File, done.id)
        assert record is not None and record.sha256 == want and record.owner == "bob"
    assert page.locator(f"tr.file[data-uuid='{done.id}']").count() == 1
    assert page.errors == [] and page.elsewhere == []
