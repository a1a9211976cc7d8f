"""The caesar-rest client library: `Client` (every v1.0 endpoint, on httpx), its exceptions, the answer types.

    from caesar_rest.client import Client
    with Client("http://127.0.0.1:8080", token="...") as caesar:
        record = caesar.upload("image.fits", progress=lambda done, total: ...)
        job = caesar.submit("sfinder", {"inputfile": record["uuid"], "seedthr": 5})
        caesar.wait(job["job_id"])
        caesar.output(job["job_id"], "out.tar.gz")
"""
from __future__ import annotations

from .client import Client, api_base
from .errors import (
    APIError,
    BadRequest,
    ClientError,
    Conflict,
    Forbidden,
    InvalidOption,
    NotFound,
    ServerError,
    TransportError,
    Unauthorized,
)
from .models import TERMINAL_STATES, AppDescription, AppSummary, FileRecord, JobLogs, JobPage, JobStatus, JobSummary

__all__ = ["TERMINAL_STATES", "APIError", "AppDescription", "AppSummary", "BadRequest", "Client", "ClientError",
           "Conflict", "FileRecord", "Forbidden", "InvalidOption", "JobLogs", "JobPage", "JobStatus", "JobSummary",
           "NotFound", "ServerError", "TransportError", "Unauthorized", "api_base"]
