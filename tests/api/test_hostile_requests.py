"""Requests from web pages and hostile clients, against the API as a real process (caesar-rest serve): a simple
cross-site request, a JSON body without its Content-Type, a forged Host header (DNS rebinding), a metrics label
injection; and, through the Flask test client (nothing there depends on the server), CORS for trusted origins."""
from __future__ import annotations

import json
import time
import uuid

import requests

from caesar_rest import create_app

from ..support import API, embedded_settings

TES = "/ga4gh/tes/v1"
TASK = {"name": "from a web page", "executors": [{"image": "alpine", "command": ["true"]}]}
EVIL = "http://evil.example"


def _tasks(base: str) -> list[dict]:
    return requests.get(f"{base}{TES}/tasks", timeout=10).json()["tasks"]


def _pending_job(base: str) -> str:
    """A job that stays PENDING (no worker runs here), for cancels to aim at."""
    answer = requests.post(f"{base}{API}/job", json={"app": "sleeper", "job_inputs": {"seconds": 1}}, timeout=10)
    assert answer.status_code == 202, answer.text
    return answer.json()["job_id"]


def _state(base: str, job_id: str) -> str:
    return requests.get(f"{base}{API}/job/{job_id}/status", timeout=10).json()["state"]


def test_a_simple_cross_site_request_creates_nothing(api_process):
    """What a page on another site can send without a CORS preflight: fetch(url, {method: "POST", mode: "no-cors",
    body: new Blob([task])}) goes out with no Content-Type, and Origin says where it comes from. The old code
    created the task; now the Origin is a 403, and even without one a body that does not say JSON is a 415."""
    _proc, base = api_process(TES_HOST_RUNTIME=True)
    body = json.dumps(TASK).encode()
    from_page = requests.post(f"{base}{TES}/tasks", data=body, timeout=10,
                              headers={"Origin": EVIL, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"})
    assert from_page.status_code == 403, from_page.text
    assert "Cross-site request refused" in from_page.json()["message"] and EVIL in from_page.json()["message"]
    # The same body with no browser headers at all (a page cannot strip Origin, but a typeless body alone is enough
    # to refuse), and as text/plain, the other simple type.
    typeless = requests.post(f"{base}{TES}/tasks", data=body, timeout=10)
    assert typeless.status_code == 415 and "application/json" in typeless.json()["message"], typeless.text
    plain = requests.post(f"{base}{TES}/tasks", data=body, headers={"Content-Type": "text/plain"}, timeout=10)
    assert plain.status_code == 415, plain.text
    job = requests.post(f"{base}{API}/job", data=json.dumps({"app": "sleeper"}), timeout=10)
    assert job.status_code == 415, job.text
    assert _tasks(base) == []
    # The service's own pages and non-browser clients still work.
    own = requests.post(f"{base}{TES}/tasks", json=TASK, headers={"Origin": base}, timeout=10)
    assert own.status_code == 200, own.text
    assert [t["id"] for t in _tasks(base)] == [own.json()["id"]]


def test_cross_site_cancels_and_deletes_are_refused(api_process):
    """A form POST (application/x-www-form-urlencoded, no preflight) and an <img src> GET to the original API's
    GET /job/<id>/cancel: the old code canceled the job for the page. A forged Origin "null" (sandboxed iframes)
    is no better."""
    _proc, base = api_process(TES_HOST_RUNTIME=True)
    job_id = _pending_job(base)
    form = requests.post(f"{base}{API}/job/{job_id}/cancel", data="x=1", timeout=10,
                         headers={"Origin": EVIL, "Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 403, form.text
    image = requests.get(f"{base}{API}/job/{job_id}/cancel", timeout=10,
                         headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors",
                                  "Sec-Fetch-Dest": "image"})
    assert image.status_code == 403, image.text
    sandboxed = requests.post(f"{base}{TES}/tasks/{job_id}:cancel", headers={"Origin": "null"}, timeout=10)
    assert sandboxed.status_code == 403, sandboxed.text
    delete = requests.post(f"{base}{API}/delete/{uuid.uuid4().hex}", headers={"Origin": EVIL}, timeout=10)
    assert delete.status_code == 403, delete.text
    assert _state(base, job_id) == "PENDING"
    # Reads are not refused (a page cannot read the answer without CORS anyway), and the user's own cancel works.
    assert requests.get(f"{base}{API}/jobs", headers={"Origin": EVIL}, timeout=10).status_code == 200
    typed = requests.get(f"{base}{API}/job/{job_id}/cancel", headers={"Sec-Fetch-Site": "none"}, timeout=10)
    assert typed.status_code == 200 and _state(base, job_id) == "CANCELED"


def test_trusted_origins_get_minimal_cors_and_others_none(tmp_path):
    """CORS only for TRUSTED_ORIGINS: the preflight names the origin (never '*', never credentials), the answer
    exposes X-Request-ID; an unlisted origin's preflight gets no CORS header, so the browser sends nothing."""
    trusted = "https://portal.example.org"
    app = create_app(embedded_settings(tmp_path / "var", TRUSTED_ORIGINS=[trusted], TES_HOST_RUNTIME=True))
    client = app.test_client()
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type,authorization"}
    ok = client.options(f"{TES}/tasks", headers={"Origin": trusted, **preflight})
    assert ok.status_code == 204
    assert ok.headers["Access-Control-Allow-Origin"] == trusted
    assert "POST" in ok.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in ok.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in ok.headers and "Origin" in ok.headers["Vary"]
    created = client.post(f"{TES}/tasks", json=TASK, headers={"Origin": trusted})
    assert created.status_code == 200, created.get_json()
    assert created.headers["Access-Control-Allow-Origin"] == trusted
    assert "X-Request-ID" in created.headers["Access-Control-Expose-Headers"]
    other = client.options(f"{TES}/tasks", headers={"Origin": EVIL, **preflight})
    assert "Access-Control-Allow-Origin" not in other.headers
    refused = client.post(f"{TES}/tasks", json=TASK, headers={"Origin": EVIL})
    assert refused.status_code == 403 and "Access-Control-Allow-Origin" not in refused.headers
    # Without TRUSTED_ORIGINS no CORS header at all, even for the service's own origin.
    plain = create_app(embedded_settings(tmp_path / "plain")).test_client()
    answer = plain.options(f"{TES}/tasks", headers={"Origin": trusted, **preflight})
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_dns_rebinding_host_is_refused(api_process):
    """DNS rebinding: a page on rebind.evil.example whose name then resolves to 127.0.0.1 is same-origin with the
    developer's `caesar-rest serve` in the browser's eyes, so Origin checks pass; only the Host header gives it
    away. On loopback the service answers loopback names only; ALLOWED_HOSTS sets the names elsewhere. The old
    code answered any Host."""
    _proc, base = api_process(TES_HOST_RUNTIME=True)
    port = base.rsplit(":", 1)[1]
    forged = requests.get(f"{base}{API}/jobs", headers={"Host": f"rebind.evil.example:{port}"}, timeout=10)
    assert forged.status_code == 400, forged.text
    assert "rebind.evil.example" in forged.json()["message"] and "ALLOWED_HOSTS" in forged.json()["message"]
    for host in ("127.0.0.1", "localhost"):
        assert requests.get(f"{base}{API}/jobs", headers={"Host": f"{host}:{port}"}, timeout=10).status_code == 200

    _proc, named = api_process(ALLOWED_HOSTS=["api.example.org", ".caesar.example.org"])
    port = named.rsplit(":", 1)[1]
    for host, status in ((f"api.example.org:{port}", 200), (f"eu.caesar.example.org:{port}", 200),
                         (f"127.0.0.1:{port}", 400), (f"api.example.org.evil.example:{port}", 400),
                         (f"evilcaesar.example.org:{port}", 400)):
        answer = requests.get(f"{named}{API}/jobs", headers={"Host": host}, timeout=10)
        assert answer.status_code == status, (host, answer.text)


def test_a_metrics_label_injection_creates_no_series(api_process):
    """`curl -X FOOBAR /health` and requests for made-up paths: the old code made a series per method sent
    (method="FOOBAR"), a cardinality attack on Prometheus. Now an unknown method is `other` and a path no route
    matches is endpoint `unmatched`."""
    _proc, base = api_process(TES_HOST_RUNTIME=True)
    marker = uuid.uuid4().hex
    for i in range(3):
        requests.request(f"FOOBAR{i}", f"{base}/health", timeout=10)
        requests.get(f"{base}/nothing-here/{marker}{i}", timeout=10)
    requests.request("FOOBAR", f"{base}/{marker}", timeout=10)

    def series() -> list[str]:
        return [line for line in requests.get(f"{base}/metrics", timeout=10).text.splitlines()
                if line.startswith("caesar_http_requests_total{")]

    # Counters are written as each response closes: wait until the last request shows.
    deadline = time.time() + 30
    lines = series()
    while not any('endpoint="unmatched",method="other",status="404"' in line for line in lines):
        assert time.time() < deadline, lines
        lines = series()
    text = "\n".join(lines)
    assert "FOOBAR" not in text and marker not in text, text
    assert 'endpoint="unmatched",method="GET",status="404"' in text, text
    labels = {part.split("=")[0] for line in lines for part in line[line.index("{") + 1:line.index("}")].split(",")}
    assert labels == {"endpoint", "method", "status"}, labels
