"""caesar_rest.guard on a bare Flask app of its own: Host names against ALLOWED_HOSTS, cross-site state-changing
requests refused unless their origin is trusted, CORS answers for trusted origins only."""
from __future__ import annotations

from typing import Any

import pytest
from flask import Blueprint, Flask

from caesar_rest import errors, guard


def make_app(**config: Any) -> Flask:
    app = Flask("guard-test")
    app.config.update(config)
    jobs = Blueprint("jobs", __name__)
    jobs.add_url_rule("/job/<job_id>/cancel", "cancel", lambda job_id: "canceled", methods=["GET", "POST"])
    app.register_blueprint(jobs)
    app.add_url_rule("/thing", "thing", lambda: "ok", methods=["GET", "POST", "DELETE"])
    guard.init_app(app)
    errors.register(app)
    return app


@pytest.mark.parametrize("header, split", [
    ("Example.ORG", ("example.org", None)), ("example.org.", ("example.org", None)),
    ("example.org:8080", ("example.org", "8080")), ("[::1]:8080", ("[::1]", "8080")), ("[::1]", ("[::1]", None)),
    ("127.0.0.1:80", ("127.0.0.1", "80")), (" spaced.org ", ("spaced.org", None)),
])
def test_a_host_header_splits_into_name_and_port(header, split):
    assert guard.split_host(header) == split


@pytest.mark.parametrize("header, allowed, ok", [
    ("api.example.org", ["api.example.org"], True),
    ("API.Example.org:443", ["api.example.org"], True),
    ("evil.org", ["api.example.org"], False),
    ("api.example.org.evil.org", ["api.example.org"], False),
    ("sub.example.org", [".example.org"], True),
    ("example.org", [".example.org"], True),
    ("badexample.org", [".example.org"], False),
    ("anything", ["*"], True),
    ("", ["*"], False),
    ("[::1]:8080", ["[::1]"], True),
])
def test_host_allowed_matches_names_domains_and_the_wildcard(header, allowed, ok):
    assert guard.host_allowed(header, allowed) is ok


def test_a_host_outside_allowed_hosts_is_a_400_naming_it():
    client = make_app(ALLOWED_HOSTS=["api.example.org"]).test_client()
    assert client.get("/thing", headers={"Host": "api.example.org"}).status_code == 200
    refused = client.get("/thing", headers={"Host": "rebound.attacker.net"})
    assert refused.status_code == 400 and "rebound.attacker.net" in refused.get_data(as_text=True)


def test_unchecked_hosts_without_the_setting():
    assert make_app().test_client().get("/thing", headers={"Host": "whatever"}).status_code == 200


@pytest.mark.parametrize("method, path, headers, status", [
    ("POST", "/thing", {}, 200),                                                       # curl: no Origin
    ("POST", "/thing", {"Origin": "http://localhost"}, 200),                           # the service's own pages
    ("POST", "/thing", {"Origin": "http://evil.example"}, 403),
    ("POST", "/thing", {"Origin": "null"}, 403),                                       # sandboxed iframes, files
    ("DELETE", "/thing", {"Origin": "http://evil.example"}, 403),
    ("GET", "/thing", {"Origin": "http://evil.example"}, 200),                         # reads are not refused
    ("GET", "/job/1/cancel", {"Origin": "http://evil.example"}, 403),                  # a GET that changes state
    ("POST", "/thing", {"Sec-Fetch-Site": "cross-site"}, 403),
    ("POST", "/thing", {"Sec-Fetch-Site": "same-origin"}, 200),
    ("POST", "/thing", {"Sec-Fetch-Site": "none"}, 200),
    ("POST", "/thing", {"Origin": "https://app.example.org"}, 200),                    # trusted
    ("POST", "/thing", {"Origin": "https://APP.example.org/"}, 200),
    ("POST", "/thing", {"Origin": "http://app.example.org"}, 403),                     # another scheme
])
def test_cross_site_state_changes_are_refused_unless_trusted(method, path, headers, status):
    client = make_app(TRUSTED_ORIGINS=["https://app.example.org"]).test_client()
    response = client.open(path, method=method, headers=headers)
    assert response.status_code == status, response.get_data(as_text=True)
    if status == 403:
        assert "Cross-site request refused" in response.get_data(as_text=True)


def test_the_same_host_on_another_port_is_another_origin():
    client = make_app().test_client()
    host = {"Host": "localhost:8080"}
    assert client.post("/thing", headers={**host, "Origin": "http://localhost:8080"}).status_code == 200
    assert client.post("/thing", headers={**host, "Origin": "http://localhost:9999"}).status_code == 403


def test_cors_answers_trusted_origins_only():
    client = make_app(TRUSTED_ORIGINS=["https://app.example.org"]).test_client()
    preflight = client.options("/thing", headers={"Origin": "https://app.example.org",
                                                  "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.org"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    other = client.options("/thing", headers={"Origin": "https://evil.example",
                                              "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in other.headers
    read = client.get("/thing", headers={"Origin": "https://app.example.org"})
    assert read.headers["Access-Control-Allow-Origin"] == "https://app.example.org" and "Origin" in read.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in read.headers
    assert "Access-Control-Allow-Origin" not in client.get("/thing", headers={"Origin": "https://evil.example"}).headers


def test_no_cors_headers_at_all_without_trusted_origins():
    response = make_app().test_client().get("/thing", headers={"Origin": "http://localhost"})
    assert "Access-Control-Allow-Origin" not in response.headers and "Vary" not in response.headers
