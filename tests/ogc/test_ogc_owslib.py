"""OWSLib (owslib.ogcapi.processes, from PyPI) against the real API and worker processes: it lists and describes the
processes and executes sfinder, synchronously and asynchronously; every JSON answer is valid against the 1.0
schemas; the archive output is the job's tar.gz with the catalogue."""
from __future__ import annotations

import base64
import io
import tarfile

import pytest
from openapi_spec_validator import validate as validate_openapi
from owslib.ogcapi.processes import Processes

from ..apps.fitsgen import default_sources, make_image
from .conftest import TOKENS
from .ogc_support import upload, wait_status

CONF = "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/"


@pytest.fixture
def owslib(ogc_stack):
    # OWSLib keeps its headers in one module-level dict: every client in the process shares them (one user here).
    return Processes(ogc_stack["ogc"], headers={"Authorization": f"Bearer {TOKENS['alice']}"})


@pytest.fixture(scope="module")
def fits_href(ogc_stack, tmp_path_factory):
    from .conftest import session_for

    path = tmp_path_factory.mktemp("fits") / "field.fits"
    make_image(path, sources=default_sources())
    record = upload(session_for("alice"), ogc_stack["base"], path)
    return f"{ogc_stack['base']}/caesar/api/v1.0/download-id/{record['uuid']}"


def test_landing_conformance_and_api(owslib, ogc_stack, alice, schemas):
    schemas.validate(owslib.response, "landingPage")
    rels = {link["rel"] for link in owslib.links}
    ogc_rel = "http://www.opengis.net/def/rel/ogc/1.0/"
    assert {"self", "alternate", "service-desc", "service-doc", "conformance", ogc_rel + "processes",
            ogc_rel + "job-list"} <= rels
    conformance = owslib.conformance()
    schemas.validate(conformance, "confClasses")
    assert {CONF + c for c in ("core", "ogc-process-description", "json", "html", "oas30", "job-list",
                               "dismiss")} <= set(conformance["conformsTo"])
    document = owslib.api()
    validate_openapi(document)
    assert {"/processes", "/processes/{process_id}", "/jobs", "/jobs/{job_id}/results"} <= set(document["paths"])
    # Each process has an execution path of its own, its body its inputs exactly (the template has none).
    names = {p["id"] for p in alice.get(ogc_stack["ogc"] + "/processes", timeout=10).json()["processes"]}
    assert {f"/processes/{n}/execution" for n in names} <= set(document["paths"])
    assert "/processes/{process_id}/execution" not in document["paths"]
    body = document["paths"]["/processes/sleeper/execution"]["post"]["requestBody"]["content"]["application/json"]
    inputs = body["schema"]["properties"]["inputs"]
    assert set(inputs["properties"]) == {"seconds", "message", "exit-code", "allocate-mb"}
    assert inputs["additionalProperties"] is False
    item = document["paths"]["/processes/{process_id}"]
    param = next(p for p in item.get("parameters", []) + item["get"]["parameters"] if p["name"] == "process_id")
    assert param["schema"]["enum"] == sorted(names)
    whole = alice.get(ogc_stack["base"] + "/openapi.json", timeout=10).json()
    assert "/ogcapi/jobs/{job_id}" in whole["paths"] and "ogc_statusInfo" in whole["components"]["schemas"]


def test_processes_are_the_apps(owslib, schemas):
    listed = owslib.processes()
    schemas.validate({"processes": listed, "links": []}, "processList")
    by_id = {p["id"]: p for p in listed}
    assert {"sfinder", "checksum", "sleeper", "long-sleeper"} <= set(by_id)
    assert by_id["sfinder"]["jobControlOptions"] == ["sync-execute", "async-execute", "dismiss"]
    assert "sync-execute" not in by_id["long-sleeper"]["jobControlOptions"]     # 7200 s > OGC_SYNC_WAIT
    sfinder = owslib.process("sfinder")
    schemas.validate(sfinder, "process")
    inputs = sfinder["inputs"]
    assert not {"run", "no-mpi", "no-logredir", "envfile", "no-nestedsearch", "no-extendedsearch"} & set(inputs)
    assert inputs["seedthr"]["schema"] == {"type": "number", "minimum": 0.5, "maximum": 1000, "default": 5.0}
    assert inputs["npixmin"]["schema"]["type"] == "integer" and inputs["deblend"]["schema"]["type"] == "boolean"
    assert inputs["inputfile"]["minOccurs"] == 1 and inputs["seedthr"]["minOccurs"] == 0
    assert inputs["inputfile"]["schema"]["contentMediaType"] == "application/fits"
    checksum = owslib.process("checksum")
    assert checksum["inputs"]["algorithm"]["schema"]["enum"] == ["sha256", "sha512", "md5", "blake2b"]
    assert set(sfinder["outputs"]) == {"catalog", "sources", "preview", "archive"}
    assert sfinder["outputs"]["catalog"]["schema"]["contentMediaType"] == "text/csv"
    assert sfinder["outputs"]["archive"]["schema"]["contentMediaType"] == "application/gzip"


def test_owslib_executes_sfinder_synchronously(owslib, fits_href, alice, schemas):
    results = owslib.execute("sfinder", inputs={"inputfile": {"href": fits_href}, "seedthr": 5, "deblend": True})
    schemas.validate(results, "results")
    catalog = results["catalog"]
    assert catalog["mediaType"] == "text/csv" and catalog["value"].count("\n") >= 8     # header + 8 sources
    preview = results["preview"]          # by value up to OGC_INLINE_MAX_BYTES (64 KiB here), else by reference
    if "href" in preview:
        data = alice.get(preview["href"], timeout=30).content
        assert preview["type"] == "image/png" and len(data) > 64 * 1024
    else:
        data = base64.b64decode(preview["value"])
        assert preview["encoding"] == "base64" and len(data) <= 64 * 1024
    assert data.startswith(b"\x89PNG")
    assert results["sources"]["mediaType"] == "text/plain"
    archive = results["archive"]
    assert archive["type"] == "application/gzip"
    r = alice.get(archive["href"], timeout=60)
    assert r.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        names = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers()}
        assert "field_catalog.csv" in names and "caesar_job.json" in names
        extracted = tar.extractfile(names["field_catalog.csv"])
        assert extracted is not None and extracted.read().decode() == catalog["value"]


def test_owslib_executes_sfinder_asynchronously(owslib, fits_href, ogc_stack, alice, schemas):
    info = owslib.execute("sfinder", inputs={"inputfile": {"href": fits_href}},
                          outputs={"catalog": {"transmissionMode": "reference"}}, async_=True)
    schemas.validate(info, "statusInfo")
    assert info["status"] in ("accepted", "running") and info["processID"] == "sfinder"
    location = owslib.response_headers["Location"]
    assert location == f"{ogc_stack['ogc']}/jobs/{info['jobID']}"
    assert owslib.response_headers["Preference-Applied"] == "respond-async"
    done = wait_status(alice, ogc_stack["ogc"], info["jobID"])
    schemas.validate(done, "statusInfo")
    assert done["status"] == "successful" and done["progress"] == 100
    assert {"started", "finished", "created", "updated"} <= set(done)
    rels = {link["rel"]: link["href"] for link in done["links"]}
    assert rels["http://www.opengis.net/def/rel/ogc/1.0/results"] == f"{location}/results"
    assert rels["related"].endswith(f"/caesar/api/v1.0/job/{info['jobID']}/logs")
    assert rels["describedby"].endswith(f"/caesar/api/v1.0/job/{info['jobID']}/metadata")
    results = alice.get(f"{location}/results", timeout=30).json()
    schemas.validate(results, "results")
    assert set(results) == {"catalog"} and results["catalog"]["type"] == "text/csv"
    csv = alice.get(results["catalog"]["href"], timeout=30)
    assert csv.status_code == 200 and csv.headers["Content-Type"].startswith("text/csv") and csv.text.count("\n") >= 8
