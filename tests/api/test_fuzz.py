"""Property-based fuzzing of the whole API from its own OpenAPI document (schemathesis):
no server errors, and every response matches what the document promises (status, type, schema)."""
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

# Built at import: schemathesis parametrizes at collection time (its fixture loader fails on pytest 9).
_ROOT = Path(tempfile.mkdtemp(prefix="caesar-fuzz-"))
atexit.register(shutil.rmtree, _ROOT, True)
fuzz_app = create_app(embedded_settings(_ROOT / "var"))
# Valid and invalid requests both: a bad one must come back as a documented 4xx, never a 5xx.
schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app,
                                        config=SchemathesisConfig.from_dict({"generation": {"mode": "all"}}))


# The TES routes are checked against the GA4GH schema in tests/tes; they join here once documented.
schema = schema.include(path_regex="^/(caesar/|health|metrics)")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_own_document(case):
    case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])
