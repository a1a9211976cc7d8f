"""caesar_rest.tes_task.validate: a TES task document checked against the settings alone (no transfer is tried, no
name resolved): accepted tasks come back normalised, every refusal is a 400 naming the field to fix."""
from __future__ import annotations

from typing import Any

import pytest

from caesar_rest.config import load_settings
from caesar_rest.errors import BadRequest
from caesar_rest.tes_task import mount_points, validate

EX = {"image": "localhost/caesar-apps:latest", "command": ["echo", "hi"]}


@pytest.fixture
def settings(tmp_path) -> dict[str, Any]:
    """Defaults only (no CAESAR_* from this machine's environment), host runtime on, images restricted."""
    return load_settings({"ROOT": str(tmp_path / "var"), "TES_HOST_RUNTIME": True,
                          "ALLOWED_IMAGES": ["localhost/caesar-*"]}, environ={})


def task(**fields: Any) -> dict[str, Any]:
    return {"executors": [dict(EX)], **fields}


def refused(settings, body, backend: str = "local") -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        validate(settings, body, backend, "alice")
    return caught.value


def test_a_minimal_task_is_taken_and_read_only_and_unknown_fields_are_dropped(settings):
    doc, options, warnings = validate(settings, task(id="x", state="COMPLETE", flavour="vanilla", name=None),
                                      "local", "alice")
    assert doc == {"executors": [EX]} and options == {}
    assert warnings == ["Ignored unknown field 'flavour'"]


def test_inputs_and_outputs_are_normalised(settings):
    doc, _options, _warnings = validate(settings, task(
        inputs=[{"path": "/data/in.txt", "url": "https://example.org/in.txt"},
                {"path": "/data/note.txt", "content": "inline", "url": "ignored://with-content"}],
        outputs=[{"path": "/data/out/*.csv", "url": "ftp://example.org/results/"}]), "local", "alice")
    assert doc["inputs"][0]["type"] == "FILE" and "url" not in doc["inputs"][1]
    assert doc["outputs"][0]["path_prefix"] == "/data/out"
    assert mount_points(doc) == ["/data"]


def test_backend_parameters_keep_what_is_supported_and_warn_about_the_rest(settings):
    doc, options, warnings = validate(settings, task(resources={"cpu_cores": 2, "ram_gb": 1.5, "backend_parameters":
                                                                {"TIME_LIMIT": "60", "queue": "long"}}), "local", "u")
    assert doc["resources"]["backend_parameters"] == {"time_limit": "60"} and options == {}
    assert warnings == ["Ignored unsupported backend parameter 'queue'"]


@pytest.mark.parametrize("body, field, words", [
    ([], "task", "JSON object"),
    ({"executors": []}, "executors", "at least one executor"),
    ({"executors": [{"command": ["x"]}]}, "executors[0].image", "is required"),
    ({"executors": [{"image": "a", "command": "echo hi"}]}, "executors[0].command", "array of program arguments"),
    ({"executors": [{"image": "a", "command": ["", "x"]}]}, "executors[0].command", "first one naming"),
    ({"executors": [{"image": "a", "command": ["x", 1]}]}, "executors[0].command", "strings only"),
    ({"executors": [{"image": "a", "command": ["x"], "env": {"A=B": "1"}}]}, "executors[0].env", "'A=B'"),
    ({"executors": [{"image": "a", "command": ["x"], "workdir": "rel"}]}, "executors[0].workdir", "absolute"),
    ({"executors": [{"image": "a", "command": ["x"], "workdir": "/proc/self"}]}, "executors[0].workdir",
     "executors need for themselves"),
    ({"executors": [{"image": "a", "command": ["x"], "ignore_error": "yes"}]}, "executors[0].ignore_error",
     "true or false"),
    (task(inputs=[{"path": "/data/../etc/x", "content": "x"}]), "inputs[0].path", "must not contain '..'"),
    (task(inputs=[{"path": "/etc/in.txt", "content": "x"}]), "inputs[0].path", "executors need for themselves"),
    (task(inputs=[{"path": "/data/x"}]), "inputs[0].url", "is required unless 'content'"),
    (task(outputs=[{"path": "/data/out", "url": "ftp://h.example/out", "path_prefix": {}}]), "outputs[0].path_prefix",
     "must be a string"),
    (task(inputs=[{"path": "/data/x", "url": "http://127.0.0.1/x"}]), "inputs[0].url", "loopback"),
    (task(inputs=[{"path": "/data/x", "url": "http://169.254.169.254/latest/meta-data"}]), "inputs[0].url",
     "link-local"),
    (task(inputs=[{"path": "/data/x", "url": "http://[::1]:8080/x"}]), "inputs[0].url", "loopback"),
    (task(inputs=[{"path": "/data/x", "url": "http://10.1.2.3/x"}]), "inputs[0].url", "private"),
    (task(inputs=[{"path": "/data/x", "url": "gopher://example.org/x"}]), "inputs[0].url", "not supported"),
    (task(inputs=[{"path": "/data/x", "url": "http://example.org:port/x"}]), "inputs[0].url", "is not a URL"),
    (task(inputs=[{"path": "/data/x", "url": "file:///etc/passwd"}]), "inputs[0].url", "TES_FILE_ROOTS"),
    (task(inputs=[{"path": "/data/d", "type": "DIRECTORY", "url": "https://example.org/d"}]), "inputs[0].url",
     "DIRECTORY inputs need"),
    (task(inputs=[{"path": "/data/d", "type": "DIRECTORY", "content": "x"}]), "inputs[0].content",
     "cannot make a DIRECTORY"),
    (task(inputs=[{"path": "/data/x", "type": "LINK", "content": "x"}]), "inputs[0].type", "FILE or DIRECTORY"),
    (task(outputs=[{"path": "/data/out.txt"}]), "outputs[0].url", "is required"),
    (task(outputs=[{"path": "/data/out.txt", "url": "https://example.org/up"}]), "outputs[0].url", "not supported"),
    (task(outputs=[{"path": "/data/out/*.csv", "path_prefix": "/elsewhere", "url": "ftp://example.org/o/"}]),
     "outputs[0].path_prefix", "must be a directory above"),
    (task(volumes=["/usr"]), "volumes", "executors need for themselves"),
    (task(resources={"cpu_cores": True}), "resources.cpu_cores", "must be an integer"),
    (task(resources={"cpu_cores": 10_000}), "resources.cpu_cores", "at most 64"),
    (task(resources={"ram_gb": float("nan")}), "resources.ram_gb", "finite"),
    (task(resources={"backend_parameters": {"time_limit": "\u00b2"}}), "resources.backend_parameters.time_limit",
     "digits 0-9"),
    (task(resources={"backend_parameters": {"queue": "x"}, "backend_parameters_strict": True}),
     "resources.backend_parameters.queue", "backend_parameters_strict is true"),
])
def test_a_bad_task_is_refused_naming_the_field(settings, body, field, words):
    error = refused(settings, body)
    assert error.details.get("field") == field and words in error.message, (error.message, error.details)


def test_inline_content_over_its_limit_is_refused(settings):
    limited = {**settings, "TES_MAX_CONTENT_BYTES": 10}
    validate(limited, task(inputs=[{"path": "/data/x", "content": "x" * 10}]), "local", "alice")
    assert "TES_MAX_CONTENT_BYTES" in refused(limited, task(inputs=[{"path": "/data/x", "content": "é" * 6}])).message


def test_images_are_checked_on_container_backends_only(settings):
    body = {"executors": [{"image": "alpine", "command": ["true"]}]}
    validate(settings, body, "local", "alice")             # host runtime: the image is recorded, not run
    error = refused(settings, body, backend="container")
    assert error.details["field"] == "executors[0].image" and "ALLOWED_IMAGES" in error.message


def test_an_operator_may_open_a_private_network_to_transfers(settings):
    opened = {**settings, "EGRESS_ALLOWED_NETWORKS": ["10.0.0.0/8"]}
    validate(opened, task(inputs=[{"path": "/data/x", "url": "http://10.1.2.3/x"}]), "local", "alice")
    assert "loopback" in refused(opened, task(inputs=[{"path": "/data/x", "url": "http://127.0.0.1/x"}])).message
