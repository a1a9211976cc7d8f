"""Schemathesis fuzzing of the TES routes from /openapi.json (where they are described with the TES v1.1
schemas): valid and invalid requests, never a server error, every answer as documented."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks, positive_data_acceptance
from schemathesis.config import SchemathesisConfig

from caesar_rest import create_app

from ..support import embedded_settings

# Built at import: schemathesis parametrizes at collection time.
_ROOT = Path(tempfile.mkdtemp(prefix="caesar-tes-fuzz-"))
atexit.register(shutil.rmtree, _ROOT, True)
(_ROOT / "files").mkdir()
fuzz_app = create_app(embedded_settings(_ROOT / "var", TES_HOST_RUNTIME=True,
                                        TES_FILE_ROOTS=[{"path": str(_ROOT / "files"), "scope": "user"}]))
# Every check schemathesis has (`--checks all`): a request the document allows is accepted, one it refuses is
# refused, and answers, headers and Allow are as documented.
load_all_checks()
ALL_CHECKS = CHECKS.get_all()
schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app,
                                        config=SchemathesisConfig.from_dict({
                                            "generation": {"mode": "all"},
                                            # The specification's examples name S3 buckets this server has no
                                            # access to (a 400 naming the URL): generated tasks only.
                                            "phases": {"examples": {"enabled": False}},
                                            # An opaque token is one the server gave out; a tag_value needs a
                                            # tag_key before it, which no schema of two parameters can say.
                                            "parameters": {"query.page_token": "", "query.tag_key": "WORKFLOW_ID",
                                                           "query.tag_value": ""}}))
schema = schema.include(path_regex="^/ga4gh/tes/")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_tes_routes_conform_to_the_document(case):
    # A task the schema allows may still be refused for what OpenAPI 3.0 cannot say (an env variable's name with
    # '=' or empty: 3.0 has no propertyNames) or this server's configuration decides (which storage this user may
    # reach, the backend a task names): a 400 naming the field. So every check but that one runs on CreateTask.
    if case.operation.method.upper() == "POST" and case.operation.path == "/ga4gh/tes/v1/tasks":
        case.call_and_validate(checks=ALL_CHECKS, excluded_checks=[positive_data_acceptance])
        return
    case.call_and_validate(checks=ALL_CHECKS)
