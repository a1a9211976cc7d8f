"""The typed settings (caesar_rest.config): every key the code reads is defined and documented, unknown keys and
values of the wrong type stop the start naming them, and the four sources apply in their fixed order."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from caesar_rest import cli
from caesar_rest.config import NON_SETTING_ENV, SETTABLE, Settings, SettingsError, is_setting_env, load_settings

REPO = Path(__file__).resolve().parents[2]
#: A key read from a settings mapping: settings["KEY"], cfg.get("KEY", ...), self.settings.get('KEY') ...
READ = re.compile(r"""\b(?:settings|cfg|config|conf)\s*(?:\[|\.get\()\s*["']([A-Z][A-Z0-9_]*)["']""")
ENV = re.compile(r"\bCAESAR_[A-Z0-9_]*[A-Z0-9]\b")
SKIP_DIRS = {"__pycache__", "static", "node_modules"}


def _files(*roots: str, suffixes: tuple[str, ...] = (".py",)) -> list[Path]:
    found = []
    for root in roots:
        path = REPO / root
        if path.is_file():
            found.append(path)
            continue
        found += [p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes
                  and not SKIP_DIRS.intersection(p.relative_to(REPO).parts)]
    return found


def test_every_key_the_code_reads_is_a_documented_setting():
    read: dict[str, set[str]] = {}
    for path in _files("caesar_rest", "workers", "bench", "scripts"):
        for key in READ.findall(path.read_text(encoding="utf-8", errors="replace")):
            read.setdefault(key, set()).add(str(path.relative_to(REPO)))
    assert {"AUTO_MIGRATE", "VERIFY_INPUTS", "TES_SERVICE_ID", "DB_RETRY_FOR"} <= set(read)   # the scan works
    known = {f.name for f in dataclasses.fields(Settings)}
    missing = {key: sorted(where) for key, where in read.items() if key not in known}
    assert not missing, f"read but not defined in caesar_rest/config.py: {missing}"
    for f in dataclasses.fields(Settings):
        doc = f.metadata["doc"]
        assert doc.strip() and "\n" not in doc, f"{f.name} needs a one-line doc"


def test_every_caesar_variable_in_the_tree_is_a_setting_or_known_not_to_be():
    """Scripts, units, the WSGI configs, CI and tests set CAESAR_* variables: each must load (or be allow-listed)."""
    files = _files("caesar_rest", "workers", "bench", "scripts", "tests", ".ci",
                   suffixes=(".py", ".sh", ".env", ".service", ".ini", ".yml", ".cfg", ""))
    files += [REPO / name for name in ("Makefile", "uwsgi.ini", "gunicorn.conf.py") if (REPO / name).exists()]
    names = {name for path in files if path != Path(__file__)      # this file misspells some on purpose
             for name in ENV.findall(path.read_text(encoding="utf-8", errors="replace"))}
    assert "CAESAR_WSGI_SOCKET" in names and "CAESAR_CONFIG" in names                       # the scan works
    strays = sorted(n for n in names if is_setting_env(n) and n.removeprefix("CAESAR_") not in SETTABLE)
    assert not strays, f"CAESAR_* variables that would stop the service at start: {strays}"


def test_defaults_make_a_valid_settings_object(tmp_path):
    settings = load_settings({"ROOT": str(tmp_path)}, environ={})
    assert isinstance(settings, Settings)
    assert settings["AUTO_MIGRATE"] is True and settings["VERIFY_INPUTS"] is True
    assert settings["TES_SERVICE_ID"] == "org.caesar-rest.tes" and settings.JOB_POLL_INTERVAL == 0.25
    other = load_settings({"ROOT": str(tmp_path)}, environ={})
    assert other["BACKENDS"] is not settings["BACKENDS"]           # a mutable default is each object's own


def test_unknown_key_in_the_file_is_named(tmp_path):
    path = tmp_path / "settings.yml"
    path.write_text("ROOT: /tmp/x\nJOB_POL_INTERVAL: 1\n")
    with pytest.raises(SettingsError, match=r"JOB_POL_INTERVAL \(in .*settings.yml\): did you mean JOB_POLL_INTERVAL"):
        load_settings(environ={"CAESAR_CONFIG": str(path)})
    path.write_text("DATA_DIR: /elsewhere\n")
    with pytest.raises(SettingsError, match=r"DATA_DIR .*derived from ROOT"):
        load_settings(environ={"CAESAR_CONFIG": str(path)})
    path.write_text("- ROOT\n")
    with pytest.raises(SettingsError, match="mapping of settings"):
        load_settings(environ={"CAESAR_CONFIG": str(path)})


def test_unknown_key_in_the_environment_is_named(tmp_path):
    with pytest.raises(SettingsError, match=r"CAESAR_AUTH_MOD.*did you mean AUTH_MODE"):
        load_settings(environ={"CAESAR_ROOT": str(tmp_path), "CAESAR_AUTH_MOD": "token"})
    with pytest.raises(SettingsError, match=r"JOBS_DIR .*derived from ROOT"):
        load_settings(environ={"CAESAR_JOBS_DIR": str(tmp_path)})
    # variables other programs read (uWSGI, the worker unit, the test suite, a job's own id) are not settings
    others = dict.fromkeys(NON_SETTING_ENV - {"CAESAR_CONFIG"}, "1")
    others.update(CAESAR_WSGI_SOCKET="/run/x.sock", CAESAR_TEST_PG="postgresql://x", CAESAR_ROOT=str(tmp_path))
    assert load_settings(environ=others)["ROOT"] == str(tmp_path.resolve())


def test_unknown_key_in_the_mapping_passed_in_is_named(tmp_path):
    with pytest.raises(SettingsError, match=r"STALE_AFTR .*did you mean STALE_AFTER"):
        load_settings({"ROOT": str(tmp_path), "STALE_AFTR": 5}, environ={})
    assert load_settings({"root": str(tmp_path)}, environ={})["ROOT"] == str(tmp_path.resolve())   # any case


def test_environment_values_are_json_when_they_parse(tmp_path):
    settings = load_settings(environ={
        "CAESAR_ROOT": str(tmp_path), "CAESAR_BACKENDS": '{"local": {}, "container": {"engine": "podman"}}',
        "CAESAR_JOB_POLL_INTERVAL": "0.5", "CAESAR_MAX_UPLOAD_BYTES": "1024", "CAESAR_LOG_JSON": "true",
        "CAESAR_ALLOWED_HOSTS": '["a.example", "b.example"]', "CAESAR_QUEUE_PREFIX": "",
        "CAESAR_S3_PREFIX": "2024", "CAESAR_DATABASE_URL": "null", "CAESAR_ALLOW_ANONYMOUS": "yes",
        "CAESAR_SANDBOX_USER": "65534", "CAESAR_MAX_ACTIVE_JOBS_PER_USER": "null"})
    assert settings["BACKENDS"] == {"local": {}, "container": {"engine": "podman"}}
    assert settings["JOB_POLL_INTERVAL"] == 0.5 and settings["MAX_UPLOAD_BYTES"] == 1024
    assert settings["LOG_JSON"] is True and settings["ALLOW_ANONYMOUS"] is True
    assert settings["ALLOWED_HOSTS"] == ["a.example", "b.example"] and settings["QUEUE_PREFIX"] == ""
    assert settings["S3_PREFIX"] == "2024"                       # a string setting keeps its text
    assert settings["DATABASE_URL"] == f"sqlite:///{tmp_path.resolve() / 'caesar.db'}"     # null: the default
    assert settings["SANDBOX_USER"] == 65534 and settings["MAX_ACTIVE_JOBS_PER_USER"] is None


@pytest.mark.parametrize("source, key, value", [
    ("mapping", "JOB_POLL_INTERVAL", "fast"),
    ("mapping", "OUTPUT_GZIP_LEVEL", True),                     # a bool is not a number
    ("mapping", "MAX_UPLOAD_BYTES", 1.5),
    ("mapping", "BROKER_URL", 5),
    ("mapping", "OIDC_ALGORITHMS", "RS256"),
    ("env", "MAX_UPLOAD_BYTES", "64GiB"),
    ("env", "LOG_JSON", "maybe"),
    ("file", "STALE_AFTER", "a minute"),
])
def test_a_value_of_the_wrong_type_is_named(tmp_path, source, key, value):
    overrides, environ = {"ROOT": str(tmp_path)}, {}
    if source == "mapping":
        overrides[key] = value
    elif source == "env":
        environ[f"CAESAR_{key}"] = value
    else:
        (tmp_path / "s.yml").write_text(f"{key}: {value}\n")
        environ["CAESAR_CONFIG"] = str(tmp_path / "s.yml")
    with pytest.raises(SettingsError, match=f"setting {key} must be .*{re.escape(repr(value))}"):
        load_settings(overrides, environ=environ)


def test_precedence_defaults_then_file_then_environment_then_mapping(tmp_path):
    path = tmp_path / "settings.yml"
    path.write_text("QUEUE_PREFIX: file.\nDEFAULT_USER: file-user\nLOG_LEVEL: WARNING\n")
    environ = {"CAESAR_CONFIG": str(path), "CAESAR_DEFAULT_USER": "env-user", "CAESAR_LOG_LEVEL": "ERROR"}
    settings = load_settings({"ROOT": str(tmp_path), "LOG_LEVEL": "DEBUG"}, environ=environ)
    assert settings["S3_REGION"] == "us-east-1"             # default
    assert settings["QUEUE_PREFIX"] == "file."               # file over default
    assert settings["DEFAULT_USER"] == "env-user"            # environment over file
    assert settings["LOG_LEVEL"] == "DEBUG"                  # mapping over environment


def test_derived_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"ROOT": "var", "APPS_DIR": "apps", "BACKENDS": ["local", "container"]}, environ={})
    root = tmp_path.resolve() / "var"
    assert settings["ROOT"] == str(root) and settings["APPS_DIR"] == str(tmp_path.resolve() / "apps")
    assert settings["DATA_DIR"] == str(root / "data") and settings["JOBS_DIR"] == str(root / "jobs")
    assert settings["DATABASE_URL"] == f"sqlite:///{root / 'caesar.db'}"
    assert settings["RESULT_BACKEND"] == f"file://{root / 'results'}"
    assert settings["BACKENDS"] == {"local": {}, "container": {}}
    given = load_settings({"ROOT": "var", "DATABASE_URL": "postgresql+psycopg://db/x"}, environ={})
    assert given["DATABASE_URL"] == "postgresql+psycopg://db/x"


def test_settings_read_as_a_mapping(tmp_path):
    settings = load_settings({"ROOT": str(tmp_path), "S3_SECRET_ACCESS_KEY": "hush"}, environ={})
    plain = {**settings, "JOB_POLL_INTERVAL": 1.0}
    assert dict(settings) == {key: settings[key] for key in settings} and len(settings) == len(plain)
    assert "ROOT" in settings and "NOPE" not in settings and settings.get("NOPE", 3) == 3
    with pytest.raises(KeyError):
        settings["NOPE"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.ROOT = "/elsewhere"  # type: ignore[misc]
    again = load_settings(plain, environ={})                   # a dict made from a Settings (derived keys and all)
    assert again["JOB_POLL_INTERVAL"] == 1.0 and again == {**settings, "JOB_POLL_INTERVAL": 1.0}
    assert Settings.from_mapping(settings) is settings and Settings.from_mapping(plain) == again
    assert "hush" not in repr(settings)


def test_settings_command_lists_every_key_with_secrets_redacted(tmp_path, monkeypatch, capsys):
    for name in [n for n in __import__("os").environ if n.startswith("CAESAR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CAESAR_ROOT", str(tmp_path))
    monkeypatch.setenv("CAESAR_S3_SECRET_ACCESS_KEY", "s3-hush")
    monkeypatch.setenv("CAESAR_BROKER_URL", "amqp://caesar:mq-hush@mq.internal:5672//")
    monkeypatch.setenv("CAESAR_AUTH_USERS", '{"alice": {"password_hash": "pw-hush", "admin": true}}')
    assert cli.main(["settings"]) == 0
    out = capsys.readouterr().out
    shown = re.findall(r"^([A-Z][A-Z0-9_]*) = ", out, re.M)
    assert shown == [f.name for f in dataclasses.fields(Settings)]
    for f in dataclasses.fields(Settings):
        assert f"{f.name} = " in out and f.metadata["doc"] in out
    assert "hush" not in out and "amqp://caesar:***@mq.internal" in out and "'admin': True" in out
    monkeypatch.setenv("CAESAR_ROOTT", "x")
    assert cli.main(["settings"]) == 2
    assert "CAESAR_ROOTT" in capsys.readouterr().err
