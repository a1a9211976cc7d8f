"""Schemathesis fuzzing of the TES routes from /openapi.json (where they are described with the TES v1.1
schemas): valid and invalid requests, never a server error, every answer as documented."""
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

# Built at import: schemathesis parametrizes at collection time.
_ROOT = Path(tempfile.mkdtemp(prefix="caesar-tes-fuzz-"))
atexit.register(shutil.rmtree, _ROOT, True)
(_ROOT / "files").mkdir()
fuzz_app = create_app(embedded_settings(_ROOT / "var", TES_HOST_RUNTIME=True,
                                        TES_FILE_ROOTS=[{"path": str(_ROOT / "files"), "scope": "user"}]))
schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app,
                                        config=SchemathesisConfig.from_dict({"generation": {"mode": "all"}}))
schema = schema.include(path_regex="^/ga4gh/tes/")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_tes_routes_conform_to_the_document(case):
    case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])
