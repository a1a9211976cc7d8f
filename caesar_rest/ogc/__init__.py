"""OGC API - Processes 1.0 on the engine: processes are the registered apps, an OGC job is an app job (same table,
queues, workers, backends, auth and isolation). The HTTP surface is caesar_rest/api/ogc.py and ogc_jobs.py; this
package holds what they share: process descriptions (processes.py), execute requests (execute.py), job status and
results (status.py), exceptions (problems.py), formats and HTML (formats.py), the OpenAPI document (openapi.py)."""
from __future__ import annotations

PREFIX = "/ogcapi"
CONF = "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/"
#: The conformance classes declared and met (callback: subscriber URIs through the notification outbox).
CONFORMANCE = [CONF + c for c in ("core", "ogc-process-description", "json", "html", "oas30", "job-list",
                                  "callback", "dismiss")]
REL = "http://www.opengis.net/def/rel/ogc/1.0/"
