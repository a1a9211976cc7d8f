"""Property-based fuzzing of the whole API from its own OpenAPI document (schemathesis):
no server errors, and every response matches what the document promises (status, type, schema)."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig

from caesar_rest import create_app

from ..support import embedded_settings

# Built at import: schemathesis parametrizes at collection time (its fixture loader fails on pytest 9).
_ROOT = Path(tempfile.mkdtemp(prefix="caesar-fuzz-"))
atexit.register(shutil.rmtree, _ROOT, True)
fuzz_app = create_app(embedded_settings(_ROOT / "var"))
# Valid and invalid requests both: a bad one must come back as a documented 4xx, never a 5xx.
# Every check schemathesis has (`--checks all`): a request the document allows is accepted, one it refuses is
# refused, and answers, headers and Allow are as documented.
load_all_checks()
ALL_CHECKS = CHECKS.get_all()
schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app,
                                        config=SchemathesisConfig.from_dict({
                                            "generation": {"mode": "all"},
                                            # An opaque token is one the server gave out: none can be generated.
                                            "parameters": {"query.page_token": ""},
                                            # A multipart field is text: a "number" or "null" sent there is the
                                            # same characters as a string, so no type of it can be refused.
                                            "operations": [{"include-path": "/caesar/api/v1.0/upload",
                                                            "generation": {"mode": "positive"}}]}))


# The TES routes are checked against the GA4GH schema in tests/tes; they join here once documented.
# (exclude, not include: schemathesis 4.32 drops an include filter when the config has an operations section)
# The tus routes are fuzzed below, with the checks whose assumptions tus keeps.
schema = schema.exclude(path_regex="^/(ga4gh|ogcapi)/").exclude(path_regex="^/caesar/api/v1.0/uploads")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_own_document(case):
    case.call_and_validate(checks=ALL_CHECKS)


# Resumable uploads (tus 1.0), with every check. tus answers a Tus-Resumable version it does not speak with 412 and a
# chunk whose checksum is wrong with 460: refusals, added to the statuses negative_data_rejection counts as such.
# positive_data_acceptance takes 404 and 410 (a chunk for an upload id it made up, or one expired), 409 (an
# offset that is not the upload's), 413 (a chunk or length past what is left or allowed) and 400 for POST's
# Upload-Metadata, whose base64 values are checked once decoded (a file name with '/' is refused, as POST
# /upload refuses it), which a schema cannot say.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "410", "412", "413", "415", "422", "428", "429", "460"]
tus_schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app, config=SchemathesisConfig.from_dict({
    "generation": {"mode": "all"},
    "checks": {"negative_data_rejection": {"expected-statuses": REFUSALS},
               "positive_data_acceptance": {"expected-statuses": ["2XX", "400", "401", "403", "404", "409", "410",
                                                                  "413"]}}})).include(
    path_regex="^/caesar/api/v1.0/uploads")


@schemathesis.serializer("application/offset+octet-stream")
def _chunk(_ctx, value) -> bytes:
    """A tus chunk is raw bytes: the generated binary string as it is."""
    return value if isinstance(value, bytes) else str(value).encode()


@tus_schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_resumable_uploads_conform_to_the_document(case):
    case.call_and_validate(checks=ALL_CHECKS)
