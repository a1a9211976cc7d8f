"""What the service answers, as typed dictionaries (the JSON as it comes: `--json` prints it unchanged)."""
from __future__ import annotations

from typing import Any, TypedDict


class FileRecord(TypedDict, total=False):
    uuid: str
    filename_orig: str
    format: str
    size: float
    size_bytes: int
    sha256: str
    date: str
    path: str
    tag: str | None
    status: str


class AppSummary(TypedDict, total=False):
    name: str
    version: str
    description: str
    backends: list[str]
    default_backend: str


class AppOption(TypedDict, total=False):
    name: str
    type: str
    required: bool
    default: Any
    help: str
    category: str
    effect: str
    min: float
    max: float
    allowed: list[Any]
    pattern: str
    media_type: str
    note: str
    argv: str


class AppDescription(AppSummary, total=False):
    command: list[str]
    image: str | None
    resources: dict[str, Any]
    outputs: list[str]
    options: list[AppOption]
    retries: dict[str, Any]


class JobSummary(TypedDict, total=False):
    job_id: str
    app: str
    job_inputs: dict[str, Any]
    submit_date: str
    state: str
    status: str
    tag: str | None
    backend: str
    end_date: str | None


class JobStatus(TypedDict, total=False):
    job_id: str
    state: str
    status: str
    exit_status: int | None
    elapsed_time: str | None
    pid: str | None
    cancel_requested: bool


class JobLogs(TypedDict):
    job_id: str
    state: str
    stdout: str
    stderr: str


class JobPage(TypedDict, total=False):
    jobs: list[JobSummary]
    page: int | None
    per_page: int
    total: int | None
    pages: int | None
    has_next: bool
    next_page_token: str | None
    total_exceeds: int


#: The states a job ends in; the CLI's `wait` exit codes for them (SUCCESS 0).
TERMINAL_STATES = ("SUCCESS", "FAILURE", "TIMED-OUT", "CANCELED", "ABORTED")
