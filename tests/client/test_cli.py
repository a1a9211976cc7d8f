"""The caesar command (in-process, as its console script runs) against the real API and worker: every command,
--json output that parses, the documented exit codes, and client-side validation naming what the service would."""
from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
import requests

from caesar_rest import API_PREFIX
from caesar_rest.client.profile import config_file

from ..support import free_port
from .conftest import TOKENS


def test_login_stores_the_credentials_owner_only_and_env_overrides(caesar, stack):
    ran = caesar("login", stack["base"], "--token", TOKENS["alice"], "--json", token=None, url=None)
    assert ran.code == 0, ran.stderr
    path = config_file()
    assert ran.json()["config"] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"url": stack["base"], "auth": "token", "token": TOKENS["alice"]}
    assert caesar("files", "--json", token=None, url=None).code == 0          # from the stored profile
    assert caesar("files", token="wrong", url=None).code == 5                  # CAESAR_TOKEN overrides it
    who = caesar("whoami", "--json", token=None, url=None).json()
    assert who == {"url": stack["base"], "auth": "token", "user": None, "config": str(path)}
    refused = caesar("login", stack["base"], "--token", "wrong", token=None, url=None)
    assert refused.code == 5 and "not accepted" in refused.stderr
    assert json.loads(path.read_text())["token"] == TOKENS["alice"]          # a refused login stores nothing
    assert caesar("login", "ftp://x", "--anonymous").code == 64


def test_upload_files_download_rm(caesar, tmp_path):
    one, two = tmp_path / "one.fits", tmp_path / "two.txt"
    one.write_bytes(os.urandom(200_000))
    two.write_text("hello\n")
    ran = caesar("upload", str(one), str(two), "--tag", "cli-files", "--json")
    assert ran.code == 0, ran.stderr
    assert ran.stderr == ""                     # not a terminal: no bar
    records = ran.json()
    assert [r["filename_orig"] for r in records] == ["one.fits", "two.txt"]
    assert records[0]["sha256"] == hashlib.sha256(one.read_bytes()).hexdigest()
    listed = caesar("files", "--tag", "cli-files", "--json").json()
    assert sorted(r["uuid"] for r in listed) == sorted(r["uuid"] for r in records)
    table = caesar("files", "--tag", "cli-files")
    assert table.code == 0 and "one.fits" in table.stdout and "two.txt" in table.stdout
    got = caesar("download", records[0]["uuid"], "-o", str(tmp_path / "copy.fits"))
    assert got.code == 0 and (tmp_path / "copy.fits").read_bytes() == one.read_bytes()
    assert got.stdout.strip() == str(tmp_path / "copy.fits")
    gone = caesar("rm", records[0]["uuid"], records[1]["uuid"], "--json")
    assert gone.code == 0 and [g["uuid"] for g in gone.json()] == [r["uuid"] for r in records]
    missing = caesar("download", records[0]["uuid"], "--json", "-o", str(tmp_path / "x"))
    assert missing.code == 4 and missing.json()["error"]["error"] == "not_found"
    assert caesar("upload", str(tmp_path / "absent.fits")).code == 64


def test_apps_and_describe(caesar):
    apps = caesar("apps")
    assert apps.code == 0 and "sfinder" in apps.stdout and "checksum" in apps.stdout
    assert {a["name"] for a in caesar("apps", "--json").json()} >= {"sfinder", "sleeper", "checksum"}
    described = caesar("describe", "sleeper")
    assert described.code == 0
    # grouped by category, with type, default, range and help
    assert described.stdout.index("general") < described.stdout.index("testing")
    assert "exit-code" in described.stdout and "0 .. 255" in described.stdout
    assert "How long to sleep" in described.stdout
    assert "sha256 | sha512" in caesar("describe", "checksum").stdout
    sfinder = caesar("describe", "sfinder").stdout        # subcategories and advanced options, from the YAML
    assert "/ boxes" in sfinder and "(advanced)" in sfinder
    assert caesar("describe", "sleeper", "--json").json()["name"] == "sleeper"
    assert caesar("describe", "nope").code == 4


def test_submit_wait_status_logs_output_and_exit_codes(caesar, tmp_path):
    ran = caesar("submit", "sleeper", "--opt", "seconds=0.2", "--opt", "message=cli hello", "--tag", "cli-jobs",
                 "--wait", "--json")
    assert ran.code == 0, ran.stderr
    done = ran.json()
    assert done["state"] == "SUCCESS" and done["exit_status"] == 0 and done["tag"] == "cli-jobs"
    job_id = done["job_id"]
    assert caesar("status", job_id, "--json").json()["state"] == "SUCCESS"
    assert "SUCCESS" in caesar("status", job_id).stdout
    assert caesar("status", job_id, "--metadata").json()["app"] == "sleeper"
    logs = caesar("logs", job_id)
    assert logs.code == 0 and "cli hello" in logs.stdout
    assert "cli hello" in caesar("logs", job_id, "--json").json()["stdout"]
    assert caesar("wait", job_id).code == 0
    archive = caesar("output", job_id, "-o", str(tmp_path / "out.tar.gz"))
    assert archive.code == 0 and (tmp_path / "out.tar.gz").stat().st_size > 0
    extracted = caesar("output", job_id, "--extract", str(tmp_path / "x"), "--json")
    assert extracted.code == 0 and extracted.json()["extracted"] is True
    assert (tmp_path / "x" / f"job_{job_id}" / "sleeper.txt").read_text().startswith("cli hello")
    assert [p.name for p in (tmp_path / "x").iterdir()] == [f"job_{job_id}"]     # no archive left behind
    assert caesar("output", job_id, "-o", "a", "--extract", "b").code == 64
    # the exit codes: FAILURE 1, CANCELED 2, TIMED-OUT 3
    failed = caesar("submit", "sleeper", "--opt", "seconds=0", "--opt", "exit-code=7", "--wait")
    assert failed.code == 1 and "FAILURE (exit status 7)" in failed.stdout
    broken = caesar("submit", "broken", "--output", str(tmp_path / "broken"), "--json")
    assert broken.code == 1 and broken.json()["state"] in ("FAILURE", "ABORTED"), broken.stderr
    timed = caesar("submit", "napper", "--wait", "--json")
    assert timed.code == 3 and timed.json()["state"] == "TIMED-OUT"
    long = caesar("submit", "sleeper", "--opt", "seconds=60").stdout.strip()
    assert caesar("cancel", long, "--json").json()["job_id"] == long
    assert caesar("wait", long).code == 2
    again = caesar("cancel", long)
    assert again.code == 4 and "already finished" in again.stderr
    assert caesar("status", "not-a-job").code == 4


def test_logs_follow_prints_until_the_end(caesar):
    job_id = caesar("submit", "sleeper", "--opt", "seconds=1.5", "--opt", "message=followed").stdout.strip()
    ran = caesar("logs", job_id, "-f")
    assert ran.code == 0 and ran.stdout.count("followed") == 1
    assert caesar("status", job_id, "--json").json()["state"] == "SUCCESS"
    chunks = [json.loads(line) for line in caesar("logs", job_id, "-f", "--json").stdout.splitlines()]
    assert any("followed" in c["text"] for c in chunks if c["stream"] == "stdout")


def test_submit_uploads_a_local_file_and_extracts_the_output(caesar, tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(100_000))
    ran = caesar("submit", "checksum", "--file", f"inputfile={data}", "--opt", "algorithm=md5",
                 "--output", str(tmp_path / "out"), "--json")
    assert ran.code == 0, ran.stderr
    job_id = ran.json()["job_id"]
    text = (tmp_path / "out" / f"job_{job_id}" / "checksum.txt").read_text()
    assert hashlib.md5(data.read_bytes()).hexdigest() in text
    uploaded = ran.json()["job_inputs"]["inputfile"]
    assert len(uploaded) == 32 and caesar("rm", uploaded).code == 0


# Each: (app, --opt/--file arguments, the job_inputs the same request sends to the service unchecked).
CASES = [
    ("sleeper", ["--opt", "seconds=-1"], {"seconds": -1}),
    ("sleeper", ["--opt", "seconds=soon"], {"seconds": "soon"}),
    ("sleeper", ["--opt", "exit-code=2.5"], {"exit-code": 2.5}),
    ("sleeper", ["--opt", "exit-code=300"], {"exit-code": 300}),
    ("sleeper", ["--opt", "bogus=1"], {"bogus": "1"}),
    ("checksum", [], {}),
    ("checksum", ["--opt", "algorithm=crc", "--file", "inputfile=0123456789abcdef0123456789abcdef"],
     {"algorithm": "crc", "inputfile": "0123456789abcdef0123456789abcdef"}),
    ("sfinder", ["--opt", "deblend=perhaps", "--file", "inputfile=x.fits"], {"deblend": "perhaps",
                                                                              "inputfile": "x.fits"}),
]


@pytest.mark.parametrize("app, args, inputs", CASES)
def test_client_side_validation_names_what_the_service_would(caesar, stack, app, args, inputs):
    before = len(caesar("jobs", "--limit", "1000", "--json").json()["jobs"])
    ran = caesar("submit", app, *args, "--json")
    assert ran.code == 4
    mine = ran.json()["error"]
    assert mine["client_side"] is True
    server = requests.post(f"{stack['base']}{API_PREFIX}/job", json={"app": app, "job_inputs": inputs},
                           headers={"Authorization": f"Bearer {TOKENS['alice']}"}, timeout=30).json()
    assert (mine["error"], mine["message"], mine["option"]) == (server["error"], server["message"], server["option"])
    assert len(caesar("jobs", "--limit", "1000", "--json").json()["jobs"]) == before     # nothing was submitted
    unchecked = caesar("submit", app, *args, "--json", "--no-validate")
    assert unchecked.code == 4 and unchecked.json()["error"]["message"] == server["message"]
    assert "client_side" not in unchecked.json()["error"]


def test_client_side_backend_check_and_usage_errors(caesar, stack):
    ran = caesar("submit", "sleeper", "--backend", "nowhere", "--json")
    assert ran.code == 4 and ran.json()["error"]["field"] == "backend"
    server = requests.post(f"{stack['base']}{API_PREFIX}/job", json={"app": "sleeper", "backend": "nowhere"},
                           headers={"Authorization": f"Bearer {TOKENS['alice']}"}, timeout=30).json()
    assert ran.json()["error"]["message"] == server["message"]
    assert caesar("submit", "sleeper", "--opt", "seconds").code == 64
    assert caesar("no-such-command").code == 64
    assert caesar("apps", url=f"http://127.0.0.1:{free_port()}").code == 6
    version = caesar("--version")
    assert version.code == 0 and "caesar, version" in version.stdout


def test_jobs_table_and_keyset_paging(caesar):
    ids = [caesar("submit", "sleeper", "--opt", "seconds=0", "--tag", "cli-paging").stdout.strip() for _ in range(5)]
    first = caesar("jobs", "--tag", "cli-paging", "--limit", "2", "--json").json()
    assert [j["job_id"] for j in first["jobs"]] == ids[::-1][:2] and first["next_page_token"]
    rest = caesar("jobs", "--tag", "cli-paging", "--limit", "10", "--page-token", first["next_page_token"], "--json")
    assert [j["job_id"] for j in rest.json()["jobs"]] == ids[::-1][2:] and rest.json()["next_page_token"] is None
    shown = caesar("jobs", "--tag", "cli-paging", "--limit", "2")
    assert shown.code == 0 and ids[-1][:8] in shown.stdout and "--page-token" in shown.stderr
    assert caesar("jobs", "--state", "SUCCESS,BOGUS").code == 4
    for job_id in ids:
        assert caesar("wait", job_id).code == 0


def test_login_in_basic_mode_and_shell_completion(caesar, tmp_path):
    from werkzeug.security import generate_password_hash

    from ..support import embedded_settings, start_api

    users = {"carol": {"password_hash": generate_password_hash("c-pass")}}
    api, base = start_api(embedded_settings(tmp_path / "var", AUTH_MODE="basic", AUTH_USERS=users),
                          tmp_path / "basic-api.log")
    try:
        assert caesar("login", base, "--user", "carol", input="wrong\n", token=None, url=None).code == 5
        ran = caesar("login", base, "--user", "carol", input="c-pass\n", token=None, url=None)
        assert ran.code == 0, ran.stderr
        assert json.loads(config_file().read_text())["auth"] == "basic"
        assert caesar("apps", "--json", token=None, url=None).code == 0
        assert caesar("whoami", "--json", token=None, url=None).json()["user"] == "carol"
        asked = caesar("login", base, input="carol\nc-pass\n", token=None, url=None)      # it asks for both
        assert asked.code == 0 and "User" in asked.stdout and "Password" in asked.stdout
    finally:
        api.stop()
    api, base = start_api(embedded_settings(tmp_path / "var-none"), tmp_path / "none-api.log")
    try:
        plain = caesar("login", base, "--json", token=None, url=None)                     # nothing to ask
        assert plain.code == 0 and plain.json()["auth"] == "none"
        assert json.loads(config_file().read_text()) == {"url": base, "auth": "none"}
    finally:
        api.stop()


def test_login_asks_a_token_service_for_its_token(caesar, stack):
    asked = caesar("login", stack["base"], input=TOKENS["bob"] + "\n", token=None, url=None)
    assert asked.code == 0 and "API token" in asked.stdout and TOKENS["bob"] not in asked.stdout   # hidden
    assert json.loads(config_file().read_text())["token"] == TOKENS["bob"]


def test_shell_completion_of_commands_and_app_names(stack, tmp_path):
    """The real program, as a shell's completion function calls it."""
    import subprocess
    import sys
    from pathlib import Path

    program = str(Path(sys.executable).parent / "caesar")
    env = {**os.environ, "CAESAR_URL": stack["base"], "CAESAR_TOKEN": TOKENS["alice"],
           "XDG_CONFIG_HOME": str(tmp_path)}

    def complete(shell: str, words: str = "") -> str:
        extra = {"COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)} if words else {}
        done = subprocess.run([program], env={**env, "_CAESAR_COMPLETE": shell, **extra}, capture_output=True,
                              text=True, timeout=30, check=True)
        return done.stdout

    assert "_caesar_completion" in complete("bash_source")
    assert "plain,describe" in complete("bash_complete", "caesar desc").splitlines()
    assert "plain,sleeper" in complete("bash_complete", "caesar describe sl").splitlines()
    assert "compdef" in complete("zsh_source")


def test_the_readme_walkthrough_with_caesar(caesar, tmp_path, monkeypatch):
    """README's Using it, the caesar way: a FITS image through sfinder, its catalogue extracted."""
    from ..apps.fitsgen import default_sources, make_image

    monkeypatch.chdir(tmp_path)
    make_image(tmp_path / "VGPS_cont_MOS017.fits", sources=default_sources())
    ran = caesar("submit", "sfinder", "--file", "inputfile=VGPS_cont_MOS017.fits", "--opt", "seedthr=5",
                 "--opt", "deblend=true", "--output", "out", "--json")
    assert ran.code == 0, ran.stderr
    job_id = ran.json()["job_id"]
    catalog = tmp_path / "out" / f"job_{job_id}" / "VGPS_cont_MOS017_catalog.csv"
    assert len(catalog.read_text().splitlines()) >= 8           # a header and the eight sources, at least
    assert caesar("download", ran.json()["job_inputs"]["inputfile"], "-o", "back.fits").code == 0
    assert (tmp_path / "back.fits").read_bytes() == (tmp_path / "VGPS_cont_MOS017.fits").read_bytes()


def test_usage_per_user_and_per_app(caesar):
    assert caesar("submit", "sleeper", "--opt", "seconds=0", "--wait").code == 0
    mine = caesar("usage", "--json").json()
    assert mine["user"] == "alice" and mine["jobs"]["by_state"]["SUCCESS"] >= 1
    shown = caesar("usage")
    assert shown.code == 0 and "alice" in shown.stdout and "SUCCESS" in shown.stdout
    apps = caesar("usage", "--apps")
    assert apps.code == 0 and "sleeper" in apps.stdout
    assert caesar("usage", "--apps", "--json").json()["apps"]["sleeper"]["users"] == 1
