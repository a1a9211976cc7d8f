"""The client's pure parts, no service: the upload body's announced length, download names, the log follower's
view of a sliding window, option values from the command line, error classes from answers."""
from __future__ import annotations

import httpx

from caesar_rest.client.cli.jobs import _unseen
from caesar_rest.client.errors import InvalidOption, NotFound, ServerError, api_error
from caesar_rest.client.transfer import MultipartUpload, filename_of
from caesar_rest.client.validation import app_of, option_value


def test_the_upload_body_is_as_long_as_it_says(tmp_path):
    path = tmp_path / 'we"ird\nname.fits'
    path.write_bytes(b"x" * 3_000_001)
    body = MultipartUpload(path, "tag é", None)
    data = b"".join(body)
    assert len(data) == body.length
    assert b'filename="we\\"ird name.fits"' in data and "tag é".encode() in data
    assert data.endswith(f"--{body.boundary}--\r\n".encode())


def test_download_names_never_leave_the_directory():
    def named(header: str) -> str | None:
        return filename_of(httpx.Response(200, headers={"Content-Disposition": header}))

    assert named('attachment; filename="job_1.tar.gz"') == "job_1.tar.gz"
    assert named("attachment; filename*=UTF-8''caf%C3%A9.fits") == "café.fits"
    assert named('attachment; filename="../../etc/passwd"') == "passwd"
    assert named('attachment; filename=".."') is None


def test_log_follower_finds_what_is_new_even_when_the_window_slides():
    assert _unseen("", "a\n") == "a\n"
    assert _unseen("a\n", "a\nb\n") == "b\n"
    before = "x" * (1024 * 1024 - 10) + "end-of-before\n"
    now = before[20:] + "new line\n"           # the service's last-MiB window moved on by 20 characters
    assert _unseen(before, now) == "new line\n"
    assert _unseen("gone\n", "other\n") == "other\n"


def test_command_line_values_take_the_option_type():
    app = app_of({"name": "a", "options": [{"name": "n", "type": "int"}, {"name": "x", "type": "float"},
                                           {"name": "b", "type": "bool"}, {"name": "s", "type": "string"}]})
    opts = app.options
    assert option_value(opts["n"], "3") == 3 and option_value(opts["n"], "3.5") == 3.5
    assert option_value(opts["x"], "1e3") == 1000.0 and option_value(opts["x"], "soon") == "soon"
    assert option_value(opts["b"], "yes") is True and option_value(opts["b"], "perhaps") == "perhaps"
    assert option_value(opts["s"], "12") == "12" and option_value(None, "12") == "12"


def test_error_classes_from_answers():
    bad = api_error(400, {"error": "invalid_option", "message": "Option 'n' ...", "option": "n"})
    assert isinstance(bad, InvalidOption) and bad.option == "n" and bad.message == "Option 'n' ..."
    assert isinstance(api_error(404, {"error": "not_found", "message": "gone"}), NotFound)
    proxy = api_error(502, None, "<html>Bad Gateway</html>")
    assert isinstance(proxy, ServerError) and proxy.message == "<html>Bad Gateway</html>"
    assert api_error(400, {"error": "bad_request", "field": "tag", "message": "m"}).option == "tag"


def test_every_command_takes_json_and_the_readme_lists_every_exit_code():
    import re
    from pathlib import Path

    from caesar_rest.client.cli import EXIT, cli

    assert {"upload", "files", "download", "rm", "apps", "describe", "submit", "status", "wait", "logs", "output",
            "cancel", "jobs", "login"} <= set(cli.commands)
    for name, command in cli.commands.items():
        assert "--json" in [o for p in command.params for o in p.opts], name
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The `caesar` command"):]
    section = section[:section.index("\n## ")]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}
    assert documented == set(EXIT.values())
