"""caesar_rest.upstream: the later upstream caesar-rest's request shapes read into this service's own (job_options,
data_inputs in three shapes, bound to an app's file options), the describe keys its clients read, and the sandbox's
mount points for a bind inside a task directory. The resolver is a plain function standing in for the database."""
from __future__ import annotations

import textwrap

import pytest

from caesar_rest import upstream
from caesar_rest.apps import AppConfigError, ResolvedFile, load_app
from caesar_rest.errors import BadRequest, InvalidOption
from workers.sandbox import _inner_parents

A, B, C = "a" * 32, "b" * 32, "c" * 32
TWO_FILES = """
name: pair
command: [pair]
options:
  first:  {type: file, required: true}
  label:  {type: string, subcategory: naming, advanced: true}
  second: {type: file}
  legacy: {type: file, no_effect: accepted and ignored}
"""


@pytest.fixture
def app(tmp_path):
    path = tmp_path / "pair.yml"
    path.write_text(textwrap.dedent(TWO_FILES))
    return load_app(path)


def resolve(uuid: str, option: str) -> ResolvedFile:
    return ResolvedFile(uuid=uuid, path=f"/data/{uuid}", filename=f"{uuid[0]}.fits", size_bytes=1, sha256="0" * 64)


@pytest.mark.parametrize("value, uuids, fmt", [
    (A, [A], None),
    ([A, B], [A, B], None),
    ({"data": A}, [A], None),
    ({"data": [A, B], "format": "FITS"}, [A, B], "fits"),
    ({"data": A, "format": None}, [A], None),
])
def test_data_inputs_shapes(value, uuids, fmt):
    parsed = upstream.parse_data_inputs(value)
    assert parsed is not None and parsed.uuids == uuids and parsed.format == fmt


@pytest.mark.parametrize("value, field", [
    (7, "data_inputs"), ([], "data_inputs"), ([A, 3], "data_inputs"), ("../x", "data_inputs"),
    (A.upper(), "data_inputs"), ([A, A], "data_inputs"), ({"format": "fits"}, "data_inputs.data"),
    ({"data": A, "extra": 1}, "data_inputs"), ({"data": {"x": A}}, "data_inputs.data"),
    ({"data": A, "format": ""}, "data_inputs.format"), ({"data": A, "format": "x" * 33}, "data_inputs.format"),
    ([A] * 1001, "data_inputs"),
])
def test_bad_data_inputs_name_the_field(value, field):
    with pytest.raises(BadRequest) as caught:
        upstream.parse_data_inputs(value)
    assert caught.value.details["field"] == field


def test_job_options_is_a_synonym_never_beside_job_inputs():
    assert upstream.job_inputs({"job_options": {"x": 1}}) == ("job_options", {"x": 1})
    assert upstream.job_inputs({"job_inputs": {"x": 1}}) == ("job_inputs", {"x": 1})
    assert upstream.job_inputs({}) == ("job_inputs", None)
    with pytest.raises(BadRequest, match="not both"):
        upstream.job_inputs({"job_inputs": {}, "job_options": {}})
    with pytest.raises(InvalidOption) as caught:
        upstream.job_inputs({"job_options": "seedthr=5"})
    assert caught.value.details["option"] == "job_options"


def test_data_inputs_fill_the_unset_file_options_in_order_and_the_rest_is_left(app):
    data = upstream.parse_data_inputs([A, B, C])
    assert data is not None
    options, left = upstream.bind(app, {"label": "x"}, data, resolve, lambda _u: "fits")
    assert options == {"label": "x", "first": A, "second": B}          # legacy has no effect: never bound
    assert [f.uuid for f in left] == [C]
    options, left = upstream.bind(app, {"first": C}, upstream.parse_data_inputs(A), resolve, lambda _u: "fits")
    assert options == {"first": C, "second": A} and left == []


def test_data_inputs_format_must_match_each_file(app):
    data = upstream.parse_data_inputs({"data": [A, B], "format": "fits"})
    assert data is not None
    with pytest.raises(BadRequest) as caught:
        upstream.bind(app, None, data, resolve, lambda u: "fits" if u == A else "csv")
    assert caught.value.details["field"] == "data_inputs.format" and B in caught.value.message


def test_describe_carries_upstream_keys_always(app):
    options = {o["name"]: o for o in app.describe()["options"]}
    for key in ("mandatory", "type", "default", "enum", "min", "max", "category", "subcategory", "advanced"):
        assert all(key in o for o in options.values()), key
    assert options["first"]["mandatory"] is True and options["second"]["mandatory"] is False
    assert options["label"]["subcategory"] == "naming" and options["label"]["advanced"] is True
    assert options["first"]["enum"] is None and options["first"]["min"] is None


def test_advanced_must_be_a_boolean(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("name: bad\ncommand: [x]\noptions:\n  o: {type: int, advanced: 'yes'}\n")
    with pytest.raises(AppConfigError, match="advanced"):
        load_app(path)


@pytest.mark.parametrize("dest, earlier, made", [
    ("/tmp/a/b/tools", ["/tmp"], ["/tmp/a", "/tmp/a/b"]),
    ("/tmp/tools", ["/tmp"], []),
    ("/opt/tools", ["/tmp"], []),
    ("/tmp/a/b/tools", ["/tmp", "/tmp/a"], ["/tmp/a/b"]),
    ("/work/x/venv", ["/work", "/tmp"], ["/work/x"]),
])
def test_a_bind_inside_a_task_directory_gets_its_mount_points_made(dest, earlier, made):
    assert _inner_parents(dest, earlier) == made
