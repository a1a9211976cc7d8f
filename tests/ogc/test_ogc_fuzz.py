"""Property-based requests to the GET operations of /ogcapi from its own OpenAPI document (schemathesis): no server
error, and every answer has a documented status and content type and matches its schema. (Executions are left to
the tests that run their jobs: a generated one would create jobs and fetch generated URLs.)"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig

from caesar_rest import create_app

from ..support import embedded_settings

_ROOT = Path(tempfile.mkdtemp(prefix="caesar-ogc-fuzz-"))
atexit.register(shutil.rmtree, _ROOT, True)
fuzz_app = create_app(embedded_settings(_ROOT / "var"))
schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app,
                                        config=SchemathesisConfig.from_dict({"generation": {"mode": "all"}}))
schema = schema.include(path_regex="^/ogcapi", method="GET")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_ogc_gets_conform_to_the_document(case):
    case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])
