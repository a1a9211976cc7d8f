"""App registry: YAML → describe, validation naming the option, argv rendering (never a shell string)."""
from __future__ import annotations

from pathlib import Path

import pytest

from caesar_rest.apps import AppConfigError, Registry, ResolvedFile, render
from caesar_rest.errors import InvalidOption

from ..support import API

SFINDER_SEED = {"inputfile": "X", "run": True, "no-logredir": True, "envfile": "/home/riggi/Software/setvars.sh",
                "no-mpi": True, "no-nestedsearch": True, "no-extendedsearch": True}


def test_apps_lists_the_yaml_files(client):
    names = {a["name"] for a in client.get(f"{API}/apps").get_json()["apps"]}
    assert {"sfinder", "checksum", "sleeper"} <= names


def test_describe_says_which_options_have_no_effect(client):
    d = client.get(f"{API}/app/sfinder/describe").get_json()
    opts = {o["name"]: o for o in d["options"]}
    for name in ("run", "no-logredir", "envfile", "no-mpi", "no-nestedsearch", "no-extendedsearch"):
        assert opts[name]["effect"] == "none" and opts[name]["note"]
    assert opts["seedthr"]["type"] == "float" and opts["seedthr"]["default"] == 5.0 and opts["seedthr"]["min"] == 0.5
    assert opts["inputfile"]["required"] is True and opts["inputfile"]["type"] == "file"
    assert d["resources"]["time_limit"] == 3600 and "local" in d["backends"]


def test_describe_unknown_app_is_404(client):
    r = client.get(f"{API}/app/nope/describe")
    assert r.status_code == 404 and "nope" in r.get_json()["message"]


def fake_file(value, option):
    return ResolvedFile(uuid="a" * 32, path="/data/x.fits", filename="x.fits", size_bytes=3, sha256="0" * 64)


@pytest.fixture
def registry():
    return Registry(Path(__file__).resolve().parents[2] / "config" / "apps")


def test_seed_job_inputs_render_to_argv(registry):
    r = render(registry.get("sfinder"), SFINDER_SEED, fake_file)
    assert r.argv[0] == "caesar-sfinder"
    assert r.argv[1:3] == ["--inputfile", "inputs/x.fits"]
    assert "--seedthr" in r.argv and "5.0" in r.argv
    for ignored in ("--run", "--envfile", "--no-mpi", "/home/riggi/Software/setvars.sh"):
        assert ignored not in r.argv
    assert r.inputs["envfile"] == "/home/riggi/Software/setvars.sh"   # recorded, not passed
    assert r.files[0][2] == "inputs/x.fits"


def test_shell_metacharacters_stay_one_argv_element(registry):
    evil = "$(touch /tmp/pwned); `id` | cat && rm -rf / > x"
    r = render(registry.get("sleeper"), {"message": evil}, fake_file)
    assert r.argv[r.argv.index("--message") + 1] == evil


@pytest.mark.parametrize("inputs, option, words", [
    ({"bogus": 1}, "bogus", "Unknown option"),
    ({"seconds": "ten"}, "seconds", "must be a number"),
    ({"seconds": True}, "seconds", "must be a number"),
    ({"seconds": -1}, "seconds", ">= 0"),
    ({"seconds": 1e9}, "seconds", "<= 86400"),
    ({"exit-code": 1.5}, "exit-code", "integer"),
    ({"exit-code": 300}, "exit-code", "<= 255"),
    ({"message": 5}, "message", "must be a string"),
    ({"message": "a\x00b"}, "message", "NUL"),
    ({"message": "x" * 5000}, "message", "longer than"),
])
def test_validation_names_the_option(registry, inputs, option, words):
    with pytest.raises(InvalidOption) as exc:
        render(registry.get("sleeper"), inputs, fake_file)
    assert exc.value.details["option"] == option and words in exc.value.message


def test_enum_bool_and_required(registry):
    with pytest.raises(InvalidOption, match="must be one of"):
        render(registry.get("checksum"), {"inputfile": "u", "algorithm": "crc"}, fake_file)
    with pytest.raises(InvalidOption, match="required"):
        render(registry.get("checksum"), {}, fake_file)
    with pytest.raises(InvalidOption, match="true or false"):
        render(registry.get("sfinder"), {"inputfile": "u", "deblend": "yes"}, fake_file)
    r = render(registry.get("sfinder"), {"inputfile": "u", "deblend": True}, fake_file)
    assert "--deblend" in r.argv


def test_broken_app_yaml_fails_loudly(tmp_path):
    (tmp_path / "bad.yml").write_text("name: bad\ncommand: 'echo hi; rm -rf /'\n")
    with pytest.raises(AppConfigError, match="argv"):
        Registry(tmp_path)
    (tmp_path / "bad.yml").write_text("name: bad\ncommand: [x]\noptions:\n  o: {type: nope}\n")
    with pytest.raises(AppConfigError, match="type must be"):
        Registry(tmp_path)


def test_option_styles(tmp_path):
    (tmp_path / "s.yml").write_text(
        "name: s\ncommand: [prog]\noptions:\n"
        "  a: {type: int, style: equals}\n  b: {type: string, style: positional}\n  c: {type: string, flag: -c}\n")
    app = Registry(tmp_path).get("s")
    assert render(app, {"a": 3, "b": "pos", "c": "v"}, fake_file).argv == ["prog", "--a=3", "pos", "-c", "v"]
