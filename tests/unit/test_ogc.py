"""OGC API - Processes without a service: process descriptions from the shipped apps (output ids, media types, the
JSON Schema of each option type), the execute request's checks, the engine states as OGC statuses, the exceptions
and the OpenAPI document built from the standard's fragments (validated as OpenAPI 3.0)."""
from __future__ import annotations

from pathlib import Path

import pytest
from openapi_spec_validator import validate as validate_openapi

from caesar_rest.apps import Registry
from caesar_rest.config import PROJECT_DIR
from caesar_rest.errors import CaesarError, InvalidOption
from caesar_rest.models import Job
from caesar_rest.ogc import execute, processes, status
from caesar_rest.ogc.openapi import schemas

REGISTRY = Registry(PROJECT_DIR / "config" / "apps")
SETTINGS = {"OGC_SYNC_WAIT": 600.0, "DEFAULT_TIME_LIMIT": 86400, "OGC_INLINE_MAX_BYTES": 1024,
            "OGC_REMOTE_INPUT_MAX_BYTES": 1024, "TES_TRANSFER_TIMEOUT": 1.0, "EGRESS_ALLOWED_NETWORKS": []}


def test_output_ids_and_media_types():
    outs = processes.outputs(REGISTRY.apps["sfinder"])
    assert {k: (o.glob, o.media_type) for k, o in outs.items()} == {
        "catalog": ("*_catalog.csv", "text/csv"), "sources": ("*_sources.reg", "text/plain"),
        "preview": ("*_preview.png", "image/png"), "archive": (None, "application/gzip")}
    clash = processes.outputs_of(["a_*.txt", "a_*.txt", "*", "archive.tar"])
    assert list(clash) == ["a", "a_2", "output3", "archive_4", "archive"]


def test_description_of_sfinder(tmp_path):
    doc = processes.description(REGISTRY.apps["sfinder"], SETTINGS, "http://h/ogcapi")
    assert doc["jobControlOptions"] == ["async-execute", "dismiss"]      # 3600 s > OGC_SYNC_WAIT 600 s
    sleeper = processes.summary(REGISTRY.apps["sleeper"], SETTINGS, "http://h/ogcapi")
    assert sleeper["jobControlOptions"][0] == "sync-execute"             # 600 s fits
    assert "no-mpi" not in doc["inputs"] and "run" not in doc["inputs"]
    assert doc["inputs"]["boxsize"]["schema"] == {"type": "integer", "minimum": 4, "maximum": 4096, "default": 64}
    assert doc["inputs"]["inputfile"]["minOccurs"] == 1 and doc["inputs"]["inputfile"]["maxOccurs"] == 1
    checksum = processes.description(REGISTRY.apps["checksum"], SETTINGS, "http://h/ogcapi")
    assert checksum["inputs"]["algorithm"]["schema"] == {
        "type": "string", "default": "sha256", "enum": ["sha256", "sha512", "md5", "blake2b"]}


def _parse(body, app="sleeper"):
    return execute.parse(SETTINGS, REGISTRY.apps[app], body, "h", "alice")


def test_execute_request_shapes():
    plan = _parse({"inputs": {"seconds": {"value": 2}, "message": "hi"},
                   "outputs": {"sleeper": {"transmissionMode": "reference"}}, "response": "raw"})
    assert plan.body == {"app": "sleeper", "job_inputs": {"seconds": 2, "message": "hi"}}
    assert plan.outputs == {"sleeper": "reference"} and plan.response == "raw"
    assert _parse({}).outputs == {"sleeper": "value", "archive": "reference"}
    assert _parse({"inputs": {"inputfile": {"href": "ab" * 16}}}, "checksum").body["job_inputs"] == {
        "inputfile": "ab" * 16}
    own = _parse({"inputs": {"inputfile": {"href": f"http://h/caesar/api/v1.0/download-id/{'cd' * 16}"}}}, "checksum")
    assert own.body["job_inputs"]["inputfile"] == "cd" * 16 and not own.made_files


@pytest.mark.parametrize("body, named", [
    ({"inputs": {"nope": 1}}, "nope"), ({"inputs": {"seconds": [1]}}, "seconds"),
    ({"inputs": {"seconds": {"value": 1, "extra": 2}}}, "seconds"), ({"outputs": {"x": {}}}, "x"),
    ({"outputs": {"sleeper": {"transmissionMode": "carrier"}}}, "carrier"), ({"response": "x"}, "response"),
    ({"subscriber": {"successUri": "ftp://x"}}, "subscriber"), ({"what": 1}, "what"), ([], "JSON object"),
    ({"outputs": {"sleeper": {"format": {"mediaType": "image/png"}}}}, "text/plain"),
])
def test_execute_request_refusals(body, named):
    with pytest.raises(CaesarError) as caught:
        _parse(body)
    assert named in caught.value.message


def test_inline_input_over_the_cap_and_bad_base64():
    with pytest.raises(CaesarError, match="OGC_INLINE_MAX_BYTES"):
        _parse({"inputs": {"inputfile": {"value": "QUFB" * 400, "encoding": "base64"}}}, "checksum")
    with pytest.raises(InvalidOption, match="base64"):
        _parse({"inputs": {"inputfile": {"value": "***", "encoding": "base64"}}}, "checksum")


def test_engine_states_as_ogc_statuses():
    seen = {state: status.status_of(Job(state=state, extra={})) for states in status.STATES.values()
            for state in states}
    assert seen == {"PENDING": "accepted", "STARTED": "running", "RUNNING": "running", "SUCCESS": "successful",
                    "FAILURE": "failed", "TIMED-OUT": "failed", "ABORTED": "failed", "CANCELED": "dismissed"}
    assert status.status_of(Job(state="SUCCESS", extra={"ogc_dismissed": "t"})) == "dismissed"


def test_openapi_document_is_valid(tmp_path: Path):
    from caesar_rest import create_app
    from caesar_rest.db import dispose_all

    from ..support import embedded_settings

    app = create_app(embedded_settings(tmp_path / "var"))
    try:
        client = app.test_client()
        document = client.get("/ogcapi/api").get_json()
        validate_openapi(document)
        validate_openapi(client.get("/openapi.json").get_json())
        assert "ogc_statusInfo" in document["components"]["schemas"] and "/jobs/{job_id}" in document["paths"]
        assert len(schemas()) == 30
        problem = client.get("/ogcapi/processes/none")
        assert problem.status_code == 404 and problem.get_json()["type"].endswith("/no-such-process")
    finally:
        dispose_all()


def test_public_url_names_the_links(tmp_path: Path):
    from caesar_rest import create_app
    from caesar_rest.db import dispose_all

    from ..support import embedded_settings

    app = create_app(embedded_settings(tmp_path / "var", PUBLIC_URL="https://caesar.example.org/"))
    try:
        links = app.test_client().get("/ogcapi/processes").get_json()["links"]
        assert links[0]["href"] == "https://caesar.example.org/ogcapi/processes"
    finally:
        dispose_all()
