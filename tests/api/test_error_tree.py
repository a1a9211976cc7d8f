"""The exception tree (caesar_rest.errors): every domain error leaves a real app as its status and the JSON body the
API has always sent; none of them is an HTTP exception; STATUS, the one mapping, covers every class. werkzeug's
and flask-smorest's own errors keep the same shape."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import flask_smorest
import pytest
from werkzeug.exceptions import HTTPException

import caesar_rest
from caesar_rest import create_app, errors
from caesar_rest.db import dispose_all

from ..support import API

# Every class errors.py defines, with the status and error code a client has always seen for it.
EXPECTED = {
    errors.ValidationError: (400, "bad_request"),
    errors.InvalidOption: (400, "invalid_option"),
    errors.Unauthorized: (401, "unauthorized"),
    errors.Forbidden: (403, "forbidden"),
    errors.NotFound: (404, "not_found"),
    errors.Conflict: (409, "conflict"),
    # tus 1.0 (resumable uploads): an expired upload, a missing Tus-Resumable, a chunk's checksum mismatch
    errors.Gone: (410, "gone"),
    errors.PreconditionFailed: (412, "precondition_failed"),
    errors.ChecksumMismatch: (460, "checksum_mismatch"),
    errors.LengthRequired: (411, "length_required"),
    errors.PayloadTooLarge: (413, "payload_too_large"),
    errors.UnsupportedFormat: (415, "unsupported_format"),
    errors.TooManyRequests: (429, "too_many_requests"),
    errors.InsufficientStorage: (507, "insufficient_storage"),
    errors.ServiceUnavailable: (503, "service_unavailable"),
    errors.StorageUnavailable: (503, "service_unavailable"),
    # The service's own faults: a 500 that shows no message (it may name hosts, paths or keys).
    errors.CaesarError: (500, "internal_error"),
    errors.StorageError: (500, "internal_error"),
    errors.TransferError: (500, "internal_error"),
    errors.BackendError: (500, "internal_error"),
    errors.BackendUnavailable: (500, "internal_error"),
    errors.BackendNotConfigured: (500, "internal_error"),
    errors.BackendRejected: (500, "internal_error"),
}
INTERNAL = {"code": 500, "error": "internal_error", "status": "Internal server error",
            "message": "Internal server error"}


def defined_in_errors() -> list[type[errors.CaesarError]]:
    return [obj for _name, obj in inspect.getmembers(errors, inspect.isclass)
            if issubclass(obj, errors.CaesarError) and obj.__module__ == errors.__name__]


def every_subclass() -> set[type[errors.CaesarError]]:
    """CaesarError and all its subclasses in the packages (imported here, so that none is missed)."""
    import workers
    for package in (caesar_rest, workers):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name in ("workers.celery", "caesar_rest.wsgi"):     # entry modules: they build apps on import
                continue
            try:
                importlib.import_module(info.name)
            except ImportError:          # an optional extra (htcondor...) not installed here
                continue
    found, todo = set(), [errors.CaesarError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.fixture
def raising_app(settings):
    """The real app with one extra route that raises the error class named in its path (with a detail)."""
    app = create_app(settings)
    classes = {cls.__name__: cls for cls in EXPECTED}

    def boom(name: str):
        raise classes[name](f"{name} happened", field="thing")

    def smorest_422():
        flask_smorest.abort(422, messages={"json": {"count": ["Not a valid integer."]}})

    app.add_url_rule("/test-errors/<name>", view_func=boom)
    app.add_url_rule("/test-errors-smorest", view_func=smorest_422)
    yield app
    dispose_all()


def test_the_expectations_cover_every_class_errors_defines():
    assert set(defined_in_errors()) == set(EXPECTED)


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda cls: cls.__name__)
def test_every_domain_error_renders_with_its_status_and_body(raising_app, cls):
    response = raising_app.test_client().get(f"/test-errors/{cls.__name__}")
    status, error = EXPECTED[cls]
    assert response.status_code == status
    assert response.mimetype == "application/json"
    if error == "internal_error":
        assert response.get_json() == INTERNAL
    else:
        message = f"{cls.__name__} happened"
        assert response.get_json() == {"code": status, "error": error, "status": message, "message": message,
                                       "field": "thing"}


def test_bad_request_is_the_validation_error():
    assert errors.BadRequest is errors.ValidationError
    assert issubclass(errors.InvalidOption, errors.BadRequest)


def test_no_domain_error_is_an_http_exception():
    for cls in every_subclass():
        assert not issubclass(cls, HTTPException), cls


def test_the_table_is_complete():
    for cls in defined_in_errors():
        assert cls in errors.STATUS, f"{cls.__name__} has no entry in errors.STATUS"
    for cls in every_subclass():     # classes elsewhere answer as their nearest listed ancestor
        status, error = errors.status_of(cls)
        assert 400 <= status <= 599 and error.isidentifier() and error.islower(), (cls, status, error)
    assert errors.status_of(errors.StorageUnavailable) == (503, "service_unavailable")   # MRO: ServiceUnavailable first


def test_a_challenge_becomes_www_authenticate(settings):
    from caesar_rest.auth import hash_token

    app = create_app({**settings, "AUTH_MODE": "token", "AUTH_USERS": {"alice": {"tokens_sha256": [hash_token("t")]}}})
    try:
        response = app.test_client().get(f"{API}/jobs")
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="caesar-rest"'
        body = response.get_json()
        assert body["code"] == 401 and body["error"] == "unauthorized" and body["status"] == body["message"]
        assert "Authorization: Bearer" in body["message"]
    finally:
        dispose_all()


def test_werkzeug_and_smorest_errors_keep_their_shape(raising_app):
    client = raising_app.test_client()
    missing = client.get("/no/such/route")
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"
    assert set(missing.get_json()) == {"code", "error", "status", "message"}
    wrong = client.put(f"{API}/upload")
    assert wrong.status_code == 405 and wrong.get_json()["error"] == "method_not_allowed"
    assert "POST" in wrong.headers["Allow"]
    invalid = client.get("/test-errors-smorest")
    assert invalid.status_code == 400
    assert invalid.get_json() == {"code": 400, "error": "bad_request", "status": "Invalid request: count: Not a valid "
                                  "integer.", "message": "Invalid request: count: Not a valid integer.",
                                  "errors": {"json": {"count": ["Not a valid integer."]}}}


def test_a_domain_error_from_a_real_endpoint(raising_app):
    response = raising_app.test_client().get(f"{API}/job/not-a-job-id/status")
    body = response.get_json()
    assert response.status_code in (400, 404) and body["status"] == body["message"]
    assert body["error"] in ("bad_request", "not_found")
