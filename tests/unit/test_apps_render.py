"""caesar_rest.apps: how an app's YAML becomes an option schema, and job_inputs become argv (a list, never a shell
line). File options go through a resolver, here a plain function standing in for the database lookup."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from caesar_rest.apps import MAX_STRING, AppConfigError, Registry, ResolvedFile, load_app, render
from caesar_rest.errors import InvalidOption

REPO = Path(__file__).resolve().parents[2]
SHIPPED = Registry(REPO / "config" / "apps")
UUID = "0123456789abcdef0123456789abcdef"

TOOL = """
name: tool
version: "3"
command: [tool, --verbose]
options:
  count:  {type: int, default: 2, min: 1, max: 10}
  ratio:  {type: float, min: 0, max: 1}
  mode:   {type: enum, allowed: [fast, exact], default: fast}
  label:  {type: string}
  code:   {type: string, pattern: "[A-Z]{3}"}
  dry-run: {type: bool, default: false}
  level:  {type: int, style: equals, flag: -L}
  target: {type: string, style: positional}
  image:  {type: file}
  mask:   {type: file}
  legacy: {type: bool, no_effect: accepted for old clients}
"""


def app_from(tmp_path: Path, text: str, name: str = "app.yml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return load_app(path)


@pytest.fixture
def tool(tmp_path):
    return app_from(tmp_path, TOOL)


def uploads(files: dict[str, str]):
    """A resolver over a fixed table {uuid or path: original file name}, recording what it was asked."""
    asked: list[tuple[str, str]] = []

    def resolve(value: str, option: str) -> ResolvedFile:
        asked.append((value, option))
        if value not in files:
            raise InvalidOption(f"Option {option!r}: {value!r} is not an uploaded file", option=option)
        return ResolvedFile(uuid=UUID, path=f"/data/u/{value}", filename=files[value], size_bytes=10, sha256="0" * 64)

    resolve.asked = asked           # type: ignore[attr-defined]
    return resolve


def no_files(value: str, option: str) -> ResolvedFile:
    raise AssertionError(f"no file option was given, yet {option!r} was resolved")


def refused(app, inputs, resolver=no_files) -> InvalidOption:
    with pytest.raises(InvalidOption) as caught:
        render(app, inputs, resolver)
    return caught.value


# ---- defaults, types, styles -----------------------------------------------------------------------------------------
def test_defaults_alone_make_the_command_with_each_default_in_declaration_order(tool):
    out = render(tool, {}, no_files)
    assert out.argv == ["tool", "--verbose", "--count", "2", "--mode", "fast"]
    assert out.inputs == {"count": 2, "mode": "fast", "dry-run": False} and out.files == []


def test_none_and_a_missing_job_inputs_mean_the_defaults(tool):
    assert render(tool, None, no_files).argv == render(tool, {"count": None}, no_files).argv == \
        ["tool", "--verbose", "--count", "2", "--mode", "fast"]


def test_each_type_and_style_is_rendered(tool):
    out = render(tool, {"count": 7, "ratio": 0.25, "mode": "exact", "label": "x", "code": "ABC", "dry-run": True,
                        "level": 3, "target": "sky"}, no_files)
    assert out.argv == ["tool", "--verbose", "--count", "7", "--ratio", "0.25", "--mode", "exact", "--label", "x",
                        "--code", "ABC", "--dry-run", "-L=3", "sky"]


def test_floats_keep_their_precision_and_integral_floats_are_ints(tool):
    out = render(tool, {"ratio": 1 / 3, "count": 4.0}, no_files)
    assert out.argv[out.argv.index("--ratio") + 1] == repr(1 / 3)
    assert out.inputs["count"] == 4 and isinstance(out.inputs["count"], int) and "4" in out.argv
    argv = render(tool, {"ratio": 0}, no_files).argv       # an int where a float goes: rendered as a float
    assert argv[argv.index("--ratio") + 1] == "0.0"


def test_a_false_flag_and_a_no_effect_option_leave_no_trace_in_argv(tool):
    out = render(tool, {"dry-run": False, "legacy": True}, no_files)
    assert "--dry-run" not in out.argv and "--legacy" not in out.argv
    assert out.inputs["legacy"] is True           # kept with the job: it was accepted


@pytest.mark.parametrize("value", ["two words", "it's", 'say "hi"', "a; rm -rf /", "$(id)", "`id`", "x|y&z>w",
                                   "--count", "*", "line\nbreak", "tab\there", "  padded  ", "ünïcødé", ""])
def test_values_are_one_argv_element_each_whatever_a_shell_would_make_of_them(tool, value):
    out = render(tool, {"label": value, "target": value}, no_files)
    assert out.argv[out.argv.index("--label") + 1] == value
    assert out.argv[-1] == value and len(out.argv) == len(render(tool, {"label": "a", "target": "b"}, no_files).argv)


def test_the_shipped_apps_render_as_their_commands_expect():
    sleeper = render(SHIPPED.get("sleeper"), {"message": "hi there", "exit-code": 3}, no_files)
    assert sleeper.argv == ["caesar-sleeper", "--seconds", "1.0", "--message", "hi there", "--exit-code", "3",
                            "--allocate-mb", "0"]
    checksum = render(SHIPPED.get("checksum"), {"inputfile": UUID, "algorithm": "md5"}, uploads({UUID: "a.txt"}))
    assert checksum.argv == ["caesar-checksum", "--inputfile", "inputs/a.txt", "--algorithm", "md5"]
    sfinder = SHIPPED.get("sfinder")
    out = render(sfinder, {"inputfile": "/data/u/img.fits", "run": True, "deblend": True},
                 uploads({"/data/u/img.fits": "img.fits"}))
    assert out.argv[:3] == ["caesar-sfinder", "--inputfile", "inputs/img.fits"] and "--deblend" in out.argv
    assert "--run" not in out.argv and "--no-preview" not in out.argv


# ---- refusals, each naming the option --------------------------------------------------------------------------------
@pytest.mark.parametrize("inputs, option, words", [
    ({"colour": "red"}, "colour", "Unknown option 'colour'"),
    ({"count": "3"}, "count", "must be an integer"),
    ({"count": True}, "count", "must be an integer"),
    ({"count": 2.5}, "count", "must be an integer"),
    ({"count": 2**63}, "count", "at most"),
    ({"count": 0}, "count", "must be >= 1"),
    ({"count": 11}, "count", "must be <= 10"),
    ({"ratio": float("nan")}, "ratio", "finite"),
    ({"ratio": float("inf")}, "ratio", "finite"),
    ({"ratio": "0.5"}, "ratio", "must be a number"),
    ({"ratio": 1.5}, "ratio", "must be <= 1"),
    ({"mode": "slow"}, "mode", "must be one of ['fast', 'exact']"),
    ({"mode": 1}, "mode", "must be a string"),
    ({"label": ["a", "b"]}, "label", "must be a string, not list"),
    ({"label": {"a": 1}}, "label", "must be a string, not dict"),
    ({"label": 5}, "label", "must be a string, not int"),
    ({"label": "nul\x00byte"}, "label", "NUL"),
    ({"label": "x" * (MAX_STRING + 1)}, "label", f"longer than {MAX_STRING}"),
    ({"code": "ABCD"}, "code", "does not match the pattern"),
    ({"code": "abc"}, "code", "does not match the pattern"),
    ({"dry-run": "yes"}, "dry-run", "must be true or false"),
    ({"dry-run": 1}, "dry-run", "must be true or false"),
    ({"image": ""}, "image", "must name an uploaded file"),
])
def test_a_bad_value_is_refused_naming_its_option(tool, inputs, option, words):
    error = refused(tool, inputs)
    assert error.details["option"] == option and words in error.message, error.message
    if option != "colour":
        assert f"Option {option!r} of app 'tool'" in error.message


def test_repeated_values_are_not_taken_for_one_option(tool):
    """An option takes one value: a list is refused, never joined or spread over argv."""
    assert refused(tool, {"count": [1, 2]}).details["option"] == "count"
    assert refused(tool, {"target": ["a", "b"]}).details["option"] == "target"


@pytest.mark.parametrize("body", [[], "count=3", 3, ["count"]])
def test_job_inputs_must_be_an_object(tool, body):
    error = refused(tool, body)
    assert error.details["option"] == "job_inputs" and "JSON object" in error.message


def test_a_missing_required_option_is_named(tmp_path):
    app = app_from(tmp_path, "name: req\ncommand: [r]\noptions:\n  src: {type: file, required: true}\n"
                             "  n: {type: int, required: true}\n")
    error = refused(app, {"n": 1})
    assert error.details["option"] == "src" and "is required" in error.message
    assert refused(app, {"src": None, "n": 1}).details["option"] == "src"       # null is not a value


def test_a_wrong_type_is_reported_before_a_missing_option_and_before_any_file_lookup(tmp_path):
    app = app_from(tmp_path, "name: req\ncommand: [r]\noptions:\n  src: {type: file, required: true}\n"
                             "  n: {type: int, required: true}\n  k: {type: int}\n")
    resolver = uploads({})
    assert refused(app, {"k": "x"}, resolver).details["option"] == "k"
    assert refused(app, {"src": UUID}, resolver).details["option"] == "n"
    assert resolver.asked == []


# ---- file options ----------------------------------------------------------------------------------------------------
def test_a_file_option_is_resolved_and_staged_under_inputs(tool):
    resolver = uploads({UUID: "VGPS.fits"})
    out = render(tool, {"image": UUID}, resolver)
    assert resolver.asked == [(UUID, "image")]
    assert out.argv[-2:] == ["--image", "inputs/VGPS.fits"] and out.inputs["image"] == UUID
    (option, resolved, relpath), = out.files
    assert option == "image" and relpath == "inputs/VGPS.fits" and resolved.path == f"/data/u/{UUID}"


def test_two_files_of_one_name_get_distinct_places(tool):
    out = render(tool, {"image": "/a/data.fits.gz", "mask": "/b/data.fits.gz"},
                 uploads({"/a/data.fits.gz": "data.fits.gz", "/b/data.fits.gz": "data.fits.gz"}))
    assert [rel for _o, _f, rel in out.files] == ["inputs/data.fits.gz", "inputs/data_2.fits.gz"]
    assert out.argv[-4:] == ["--image", "inputs/data.fits.gz", "--mask", "inputs/data_2.fits.gz"]


def test_the_resolver_s_refusal_reaches_the_caller(tool):
    error = refused(tool, {"image": "../../etc/passwd"}, uploads({}))
    assert error.details["option"] == "image" and "not an uploaded file" in error.message


# ---- the YAML itself -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("name: a\ncommand: tool --flag\n", "argv, never a shell line"),
    ("name: a\ncommand: []\n", "non-empty list"),
    ("name: a\ncommand: [t, 3]\n", "list of strings"),
    ("command: [t]\n", "at least 'name' and 'command'"),
    ("name: 'a b'\ncommand: [t]\n", "invalid app name"),
    ("name: a\ncommand: [t]\noptions:\n  x: {type: list}\n", "type must be one of"),
    ("name: a\ncommand: [t]\noptions:\n  x: {type: enum}\n", "an enum needs 'allowed'"),
    ("name: a\ncommand: [t]\noptions:\n  x: {type: int, default: many}\n", "bad default"),
    ("name: a\ncommand: [t]\noptions:\n  x: {type: int, default: 20, max: 10}\n", "bad default"),
    ("name: a\ncommand: [t]\noptions:\n  x: {type: int, shell: true}\n", "unknown keys ['shell']"),
    ("name: a\ncommand: [t]\noptions:\n  x: {type: int, style: glued}\n", "style must be one of"),
    ("name: a\ncommand: [t]\noptions:\n  'x y': {type: int}\n", "invalid option name"),
    ("name: a\ncommand: [t]\nbackends: [local]\ndefault_backend: condor\n", "is not in backends"),
    ("name: a\ncommand: [t]\nimage_pull: sometimes\n", "image_pull must be"),
    ("name: a\ncommand: [t]\nnetwork: 'yes'\n", "'network' must be true or false"),
])
def test_a_broken_app_file_fails_at_load_naming_the_problem(tmp_path, text, words):
    with pytest.raises(AppConfigError) as caught:
        app_from(tmp_path, text)
    assert words in str(caught.value)


def test_two_files_defining_one_app_are_refused(tmp_path):
    app_from(tmp_path, "name: twin\ncommand: [a]\n", "one.yml")
    app_from(tmp_path, "name: twin\ncommand: [b]\n", "two.yaml")
    with pytest.raises(AppConfigError, match="also defined in"):
        Registry(tmp_path)


def test_describe_says_how_each_option_reaches_the_command(tool):
    described = {o["name"]: o for o in tool.describe()["options"]}
    assert described["count"]["argv"] == "--count (separate)" and described["count"]["min"] == 1
    assert described["level"]["argv"] == "-L (equals)" and described["target"]["argv"] == "positional"
    assert described["legacy"]["effect"] == "none" and "argv" not in described["legacy"]
    assert tool.summary() == {"name": "tool", "version": "3", "description": "", "backends": ["local"],
                              "default_backend": "local"}
