"""Execution through /ogcapi on real API and worker processes: the table of execution modes (sync, async, raw,
document, by value, by reference, one output, several), file inputs (uploaded, inline base64, an external URL under
the egress rules), and bad requests answered as OGC exceptions with nothing created."""
from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import io
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .ogc_support import counts, upload, wait_status

EXC = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"
ASYNC = {"Prefer": "return=minimal, respond-async; wait=5"}      # RFC 7240, parameters and all
MESSAGE = "ogc says hello"


def _archive_names(data: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name.rsplit("/", 1)[-1] for m in tar.getmembers()}


def _check_sleeper_value(value):
    assert value == {"value": MESSAGE + "\n", "mediaType": "text/plain"} or value["value"].strip() == MESSAGE


# (case, Prefer async?, response, outputs asked, what the answer must be)
CASES = [
    ("sync-document-value-default", False, "document", None, "doc-all"),
    ("sync-document-reference-one", False, "document", {"sleeper": {"transmissionMode": "reference"}}, "doc-ref"),
    ("sync-document-several-by-value", False, "document",
     {"sleeper": {"transmissionMode": "value"}, "archive": {"transmissionMode": "value"}}, "doc-archive-value"),
    ("sync-raw-value-one", False, "raw", {"sleeper": {"transmissionMode": "value"}}, "raw-text"),
    ("sync-raw-reference-one", False, "raw", {"sleeper": {"transmissionMode": "reference"}}, "raw-204"),
    ("sync-raw-several", False, "raw",
     {"sleeper": {"transmissionMode": "value"}, "archive": {"transmissionMode": "reference"}}, "raw-multipart"),
    ("async-document", True, "document", None, "doc-all"),
    ("async-raw-value-one", True, "raw", {"sleeper": {"transmissionMode": "value"}}, "raw-text"),
]


@pytest.mark.parametrize("case, asynchronous, response, outputs, expect", CASES, ids=[c[0] for c in CASES])
def test_execution_modes(ogc_stack, alice, schemas, case, asynchronous, response, outputs, expect):
    ogc = ogc_stack["ogc"]
    body = {"inputs": {"seconds": 0, "message": MESSAGE}, "response": response}
    if outputs is not None:
        body["outputs"] = outputs
    r = alice.post(f"{ogc}/processes/sleeper/execution", json=body, headers=ASYNC if asynchronous else {},
                   timeout=120)
    if asynchronous:
        assert r.status_code == 201, r.text
        schemas.validate(r.json(), "statusInfo")
        assert r.headers["Location"] == f"{ogc}/jobs/{r.json()['jobID']}"
        assert wait_status(alice, ogc, r.json()["jobID"])["status"] == "successful"
        r = alice.get(r.headers["Location"] + "/results", timeout=60)
    if expect.startswith("doc"):
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/json", r.text
        doc = r.json()
        schemas.validate(doc, "results")
        if expect == "doc-all":
            assert set(doc) == {"sleeper", "archive"}
            _check_sleeper_value(doc["sleeper"])
            assert doc["archive"]["type"] == "application/gzip"
            assert "sleeper.txt" in _archive_names(alice.get(doc["archive"]["href"], timeout=60).content)
        elif expect == "doc-ref":
            assert set(doc) == {"sleeper"} and doc["sleeper"]["type"] == "text/plain"
            assert alice.get(doc["sleeper"]["href"], timeout=30).text.strip() == MESSAGE
        else:
            assert doc["archive"]["encoding"] == "base64" and doc["archive"]["mediaType"] == "application/gzip"
            assert {"sleeper.txt", "caesar_job.json"} <= _archive_names(base64.b64decode(doc["archive"]["value"]))
    elif expect == "raw-text":
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain"), r.text
        assert r.text.strip() == MESSAGE
    elif expect == "raw-204":
        assert r.status_code == 204 and not r.content
        assert 'rel="related"' in r.headers["Link"] and "/results/sleeper>" in r.headers["Link"]
    else:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("multipart/related")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {r.headers['Content-Type']}\r\n\r\n".encode() + r.content)
        parts = {p["Content-ID"]: p for p in message.iter_parts()}
        assert set(parts) == {"<sleeper>", "<archive>"}
        assert parts["<sleeper>"].get_content().strip() == MESSAGE
        assert parts["<archive>"].get_content_type() == "message/external-body"


def test_a_process_that_cannot_run_synchronously_answers_asynchronously(ogc_stack, alice, schemas):
    r = alice.post(f"{ogc_stack['ogc']}/processes/long-sleeper/execution", json={"inputs": {}}, timeout=30)
    assert r.status_code == 201 and "Preference-Applied" not in r.headers
    schemas.validate(r.json(), "statusInfo")
    assert wait_status(alice, ogc_stack["ogc"], r.json()["jobID"])["status"] == "successful"


def test_failed_job_results_are_its_exception(ogc_stack, alice, schemas):
    ogc = ogc_stack["ogc"]
    r = alice.post(f"{ogc}/processes/sleeper/execution", json={"inputs": {"exit-code": 3}}, timeout=120)
    assert r.status_code == 500
    schemas.validate(r.json(), "exception")
    assert "exit" in r.json()["detail"].lower() and r.json()["state"] == "FAILURE"
    job_id = r.json()["jobID"]
    assert wait_status(alice, ogc, job_id)["status"] == "failed"
    again = alice.get(f"{ogc}/jobs/{job_id}/results", timeout=10)
    assert again.status_code == 500 and again.json()["jobID"] == job_id


def test_file_inputs_uploaded_inline_and_external(ogc_stack, alice, file_server, tmp_path, schemas):
    ogc, base = ogc_stack["ogc"], ogc_stack["base"]
    data = b"caesar ogc input\n" * 100
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / "in.txt").write_bytes(data)
    record = upload(alice, base, tmp_path / "in.txt")
    served_url, served_dir = file_server
    (served_dir / "remote.txt").write_bytes(data)
    for given in ({"href": record["uuid"]}, {"href": f"{base}/caesar/api/v1.0/download-id/{record['uuid']}"},
                  {"href": f"{base}/caesar/api/v1.0/download/{record['uuid']}"},
                  {"value": base64.b64encode(data).decode(), "mediaType": "text/plain", "encoding": "base64"},
                  {"href": f"{served_url}/remote.txt"}):
        r = alice.post(f"{ogc}/processes/checksum/execution", json={"inputs": {"inputfile": given}}, timeout=60,
                       headers=ASYNC)
        assert r.status_code == 201, r.text
        done = wait_status(alice, ogc, r.json()["jobID"])
        assert done["status"] == "successful", done
        results = alice.get(f"{ogc}/jobs/{done['jobID']}/results", timeout=30).json()
        schemas.validate(results, "results")
        assert digest in results["checksum"]["value"], (given, results)


BAD = [
    ("unknown-input", "sleeper", {"inputs": {"sleepy": 1}}, 400, "sleepy"),
    ("out-of-range", "sleeper", {"inputs": {"seconds": -5}}, 400, "seconds"),
    ("wrong-type", "sleeper", {"inputs": {"exit-code": "three"}}, 400, "exit-code"),
    ("missing-required", "checksum", {"inputs": {}}, 400, "inputfile"),
    ("list-for-one-value", "sleeper", {"inputs": {"seconds": [1, 2]}}, 400, "seconds"),
    ("unknown-output", "sleeper", {"inputs": {}, "outputs": {"nope": {}}}, 400, "nope"),
    ("bad-transmission", "sleeper", {"inputs": {}, "outputs": {"sleeper": {"transmissionMode": "pigeon"}}}, 400,
     "pigeon"),
    ("bad-response", "sleeper", {"inputs": {}, "response": "poem"}, 400, "poem"),
    ("unknown-field", "sleeper", {"inputs": {}, "mode": "auto"}, 400, "mode"),
    ("bad-base64", "checksum", {"inputs": {"inputfile": {"value": "!!!", "encoding": "base64"}}}, 400, "inputfile"),
    ("inline-too-large", "checksum",
     {"inputs": {"inputfile": {"value": base64.b64encode(b"x" * (65 * 1024)).decode(), "encoding": "base64"}}}, 413,
     "OGC_INLINE_MAX_BYTES"),
    ("egress-refused", "checksum", {"inputs": {"inputfile": {"href": "http://169.254.169.254/latest/x"}}}, 400,
     "link-local"),
    ("not-a-file-uuid", "checksum", {"inputs": {"inputfile": {"href": "0" * 32}}}, 400, "0" * 32),
    ("no-such-process", "nope", {"inputs": {}}, 404, "nope"),
]


#: The input each refusal names in its "input" field.
INPUTS = {"unknown-input": "sleepy", "out-of-range": "seconds", "wrong-type": "exit-code",
          "missing-required": "inputfile", "list-for-one-value": "seconds", "bad-base64": "inputfile",
          "inline-too-large": "inputfile", "egress-refused": "inputfile", "not-a-file-uuid": "inputfile"}


@pytest.mark.parametrize("case, process, body, status, named", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_are_ogc_exceptions_and_create_nothing(ogc_stack, alice, schemas, case, process, body, status,
                                                             named):
    before = counts(alice, ogc_stack["base"])
    r = alice.post(f"{ogc_stack['ogc']}/processes/{process}/execution", json=body, timeout=30)
    assert r.status_code == status, r.text
    problem = r.json()
    schemas.validate(problem, "exception")
    assert problem["status"] == status and problem["title"] and named in problem["detail"], problem
    if case == "no-such-process":
        assert problem["type"] == EXC + "no-such-process"
    if case in INPUTS:
        assert problem["input"] == INPUTS[case]
    assert counts(alice, ogc_stack["base"]) == before


def test_a_body_that_is_not_json_is_an_ogc_exception(ogc_stack, alice, schemas):
    r = alice.post(f"{ogc_stack['ogc']}/processes/sleeper/execution", data="seconds=1", timeout=10,
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    schemas.validate(r.json(), "exception")


class _Trickle(BaseHTTPRequestHandler):
    """Promises 1 MiB and sends a byte a tenth of a second."""

    def log_message(self, *_args) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(1024 * 1024))
        self.end_headers()
        try:
            for _ in range(600):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass


def test_an_external_input_too_slow_to_fetch_is_refused(ogc_stack, alice, schemas):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        before = counts(alice, ogc_stack["base"])
        t0 = time.monotonic()
        r = alice.post(f"{ogc_stack['ogc']}/processes/checksum/execution", timeout=60, json={
            "inputs": {"inputfile": {"href": f"http://127.0.0.1:{server.server_address[1]}/slow.bin"}}})
        assert r.status_code == 400 and "OGC_REMOTE_INPUT_TIMEOUT" in r.json()["detail"], r.text
        assert time.monotonic() - t0 < 10
        schemas.validate(r.json(), "exception")
        assert counts(alice, ogc_stack["base"]) == before
    finally:
        server.shutdown()
        server.server_close()
