"""Settings: one typed, documented, read-only object built in a fixed order: defaults in code, then the YAML file
named by CAESAR_CONFIG, then CAESAR_* environment variables (JSON when they parse as JSON), then a mapping passed in.

Why a stdlib dataclass and not pydantic-settings: the rules here are few and ours (every CAESAR_* value is JSON
when it parses, a string setting keeps its text, a misspelt key anywhere is an error at start with the likely
intended key), while pydantic-settings parses only complex values as JSON, has its own precedence and nested-key
rules, and would be one more dependency for the API and for every worker host. A field per key holds its type,
default and one-line doc (`caesar-rest settings` prints them); the object is a read-only Mapping, so the code
that reads `settings["ROOT"]`, `settings.get("ROOT", d)`, `{**settings, ...}` and `dict(settings)` is unchanged,
and plain dicts (tests, `{**settings, "ROOT": r}`) stay accepted wherever settings are passed: create_app runs them
through load_settings, and Settings.from_mapping checks any other mapping the same way.

Shapes checked where they are used (TES file roots, egress networks, S3 access, AUTH_USERS) are left to those
checks (tes_access.check_settings, auth.check_settings), which name the offending entry; here a setting is
checked by type only where that is cheap: a number where a number is expected, a bool, a string, a list, a map.
"""
# Every default below is a setting(...) call that returns a dataclasses.field (a copy per object when mutable),
# which RUF009 cannot see through:
# ruff: noqa: RUF009
from __future__ import annotations

import copy
import difflib
import json
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import CaesarError

PROJECT_DIR = Path(__file__).resolve().parent.parent

#: CAESAR_* environment variables that are not settings: the file to read, and knobs read by other programs
#: (uwsgi.ini / gunicorn.conf.py, the systemd worker unit, scripts/podman.sh and scripts/container, the test
#: suite's service URLs and HTCondor pool, the job id a worker puts in each job's environment, the `caesar`
#: client's service and token).
NON_SETTING_ENV = frozenset({"CAESAR_CONFIG", "CAESAR_WORKER_CONCURRENCY", "CAESAR_JOB_ID", "CAESAR_PODMAN_DIR",
                             "CAESAR_PODMAN_IMAGES", "CAESAR_IMAGE_CACHE", "CAESAR_DEBIAN_MIRROR", "CAESAR_URL",
                             "CAESAR_TOKEN"})
NON_SETTING_ENV_PREFIXES = ("CAESAR_WSGI_", "CAESAR_TEST_")
ENV_PREFIX = "CAESAR_"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingsError(CaesarError):
    """A setting that cannot be used: an unknown key, or a value of the wrong type. Raised at start."""


def setting(default: Any, doc: str, *, secret: bool = False, checked_by: str | None = None) -> Any:
    """A settings field: its default (copied for each object when mutable), its one-line doc; secret ones are
    kept out of repr() and redacted by `caesar-rest settings`; checked_by names where a value's shape is checked."""
    meta = {"doc": doc, "secret": secret, "checked_by": checked_by}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


def derived(doc: str) -> Any:
    """A field computed from others (by _derive); it cannot be set in the file or the environment."""
    return field(default="", metadata={"doc": doc, "secret": False, "checked_by": None, "derived": True})


@dataclass(frozen=True, eq=False)
class Settings(Mapping[str, Any]):
    """Every setting, typed, with its default and doc. Read it as a Mapping (settings["ROOT"]) or by attribute."""

    ROOT: str = setting("var", "Directory holding data/, jobs/, the embedded database and broker folders.")
    DATABASE_URL: str | None = setting(None, "SQLAlchemy URL of the job database; default sqlite:///<ROOT>/caesar.db.")
    BROKER_URL: str = setting("filesystem://", "Celery broker: filesystem:// (embedded), amqp://..., redis://...")
    RESULT_BACKEND: str | None = setting(None, "Celery result store; default file://<ROOT>/results (embedded). Job "
                                               "state never lives only here.")
    QUEUE_PREFIX: str = setting("", "Prefix for every Celery queue name (lets several deployments share one broker).")
    APPS_DIR: str = setting(str(PROJECT_DIR / "config" / "apps"), "Directory of app YAML files, one app each.")
    AUTO_MIGRATE: bool = setting(True, "The API upgrades the database schema when it starts; false where "
                                       "`caesar-rest migrate` runs before it (scripts/systemd).")
    MAX_UPLOAD_BYTES: int = setting(64 * 1024**3, "Largest accepted upload (413 above).")
    ALLOWED_FORMATS: list[str] | None = setting(None, "List of accepted upload extensions (415 otherwise); null "
                                                      "accepts any.")
    STALE_UPLOAD_AFTER: float = setting(3600.0, "Part files of unfinished uploads older than this (s) are removed at "
                                                "start and by the reaper.")
    TUS_EXPIRE_AFTER: float = setting(86400.0, "A resumable (tus) upload that gets no chunk for this long (s) "
                                               "expires: its part is removed by the reaper and its quota freed.")
    MAX_JSON_BYTES: int = setting(1024 * 1024, "Largest accepted JSON request body (413 above).")
    UPLOAD_CHUNK_BYTES: int = setting(1024 * 1024, "Read size while streaming uploads and downloads.")
    DEFAULT_BACKEND: str = setting("local", "Backend used when an app names none.")
    BACKENDS: dict[str, Any] | list[str] | None = setting({"local": {}}, "Enabled backends and their settings, by "
                                                                         "name (a list of names: no settings).")
    JOB_POLL_INTERVAL: float = setting(0.25, "Seconds between checks of a running in-slot job (cancel flag, time "
                                             "limit).")
    REMOTE_POLL_INTERVAL: float = setting(2.0, "Seconds between polls of a remote (non-blocking) job.")
    REMOTE_UNREACHABLE_TIMEOUT: float = setting(300.0, "Seconds a remote backend may stay unreachable before its jobs "
                                                       "fail.")
    HEARTBEAT_INTERVAL: float = setting(5.0, "Seconds between heartbeats of a job its worker holds (staging, "
                                             "submitting, following, fetching, finishing).")
    STALE_AFTER: float = setting(60.0, "A job whose worker sent no heartbeat for this long is declared lost by the "
                                       "reaper (and a remote job's follower may be replaced).")
    REAPER_DB_GRACE: float | None = setting(None, "Seconds the reaper waits after its database came back before "
                                                  "judging staleness; default STALE_AFTER.")
    PENDING_REPUBLISH_AFTER: float = setting(600.0, "A PENDING job older than this is published again, at most once "
                                                    "per this period (claims are atomic).")
    REAPER_INTERVAL: float = setting(15.0, "Seconds between reaper runs (celery beat, on the control queue).")
    FETCH_ATTEMPTS: int = setting(4, "Tries at fetching a job's outputs from its backend (backoff 1, 2, 4... s); "
                                     "the backend's copy is kept when all fail.")
    DB_RETRY_FOR: float = setting(600.0, "Seconds a worker keeps retrying to record a finished job while the database "
                                         "is down.")
    DB_IDLE_IN_TRANSACTION_TIMEOUT: float = setting(
        60.0, "PostgreSQL: seconds one of this service's transactions may sit idle before the server ends it and "
              "releases its locks, so a frozen or cut-off process never holds a job's row (and the reaper behind "
              "it) for longer; the service's own transactions are milliseconds. 0: off.")
    CANCEL_GRACE: float = setting(1.0, "Seconds between SIGTERM and SIGKILL when stopping a job.")
    DEFAULT_TIME_LIMIT: float = setting(86400, "Time limit (s) for apps that declare none.")
    VERIFY_INPUTS: bool = setting(True, "Workers check each staged input file's checksums against the recorded ones "
                                        "before the job runs (a mismatch fails the job).")
    OUTPUT_GZIP_LEVEL: int = setting(3, "Compression level of the streamed job tarball (standard gzip made with "
                                        "ISA-L): 0 fastest to 3 smallest; 4-9, zlib's scale, count as 3.")
    OUTPUT_INCLUDE_INPUTS: bool = setting(False, "Include the staged inputs/ directory in the job tarball.")
    JOBS_PAGE_SIZE: int = setting(50, "Default page size of GET /jobs.")
    JOBS_COUNT_LIMIT: int = setting(10000, "GET /jobs counts matching jobs up to this many; beyond it 'total' and "
                                           "'pages' are null and 'total_exceeds' gives the limit ('has_next' always "
                                           "says whether a next page exists). 0 counts every row (slow on big tables).")
    DEFAULT_USER: str = setting("anonymous", "Owner of every file and job when authentication is off.")
    LOG_LEVEL: str | int = setting("INFO", "Python log level.")
    LOG_JSON: bool = setting(False, "Log lines as JSON objects (access lines with method, path, status, duration_ms, "
                                    "request_id).")
    ACCEL_REDIRECT: bool = setting(False, "Behind nginx: downloads answered with X-Accel-Redirect, nginx sends the "
                                          "file (nginx/caesar-rest.conf).")
    ACCEL_REDIRECT_PREFIX: str = setting("/_caesar_data/", "nginx's internal location aliasing DATA_DIR, used when "
                                                           "ACCEL_REDIRECT is on.")
    METRICS_DIR: str | None = setting(None, "Directory of the per-host counter file all API processes share; default "
                                            "<ROOT>/metrics.")
    HEALTH_TIMEOUT: float = setting(5.0, "Seconds /health waits for each check before reporting it down.")
    HEALTH_REQUIRED_BACKENDS: list[str] | None = setting(None, "Backends whose failed check makes /health answer 503; "
                                                               "default [DEFAULT_BACKEND].")
    AUTH_MODE: str = setting("none", "none (one anonymous user), token (Bearer API tokens), basic (HTTP Basic) or "
                                     "oidc (JWT bearer).", checked_by="caesar_rest.auth.check_settings")
    AUTH_USERS: dict[str, Any] = setting({}, "Users for token/basic modes: {name: {password_hash, tokens_sha256: "
                                             "[...], admin, max_active_jobs, max_stored_bytes, s3}}.",
                                         checked_by="caesar_rest.auth.check_settings, tes_access.check_settings")
    OIDC_ISSUER: str | None = setting(None, "Expected 'iss' of OIDC bearer tokens.")
    OIDC_AUDIENCE: str | None = setting(None, "Expected 'aud' of OIDC bearer tokens.")
    OIDC_JWKS_URL: str | None = setting(None, "URL of the issuer's JSON Web Key Set.")
    OIDC_ALGORITHMS: list[str] = setting(["RS256", "ES256"], "Accepted JWT signature algorithms (asymmetric only).")
    OIDC_USERNAME_CLAIM: str = setting("preferred_username", "Claim that names the user.")
    OIDC_ROLES_CLAIM: str = setting("roles", "Claim listing the user's roles.")
    OIDC_ADMIN_ROLE: str = setting("caesar-admin", "Role that makes a user an admin (sees and cancels every job).")
    OIDC_LEEWAY: float = setting(30, "Seconds of clock skew tolerated on exp/nbf/iat.")
    MAX_ACTIVE_JOBS_PER_USER: int | None = setting(None, "Queued + running jobs a user may have at once (429 above); "
                                                         "null: no limit.")
    MAX_STORED_BYTES_PER_USER: int | None = setting(None, "Bytes of uploaded files a user may keep (507 above); null: "
                                                          "no limit.")
    TES_SERVICE_ID: str | None = setting("org.caesar-rest.tes", "The 'id' of the TES service-info (reverse domain "
                                                                "notation).")
    TES_RETRIES: dict[str, Any] | None = setting(None, "Retries of TES tasks, as an app's `retries`: {max: N, on: "
                                                       "[lost, node_failure, oom, timed_out]}; null: none.")
    TES_HOST_RUNTIME: bool = setting(False, "TES executors run as host processes on the local backend, in the job "
                                            "sandbox (image recorded, not used); off: TES tasks need the container "
                                            "backend.")
    TES_FILE_ROOTS: list[Any] = setting([], "Directories for TES file:// URLs, each {path, scope}: scope user (a user "
                                            "reads and writes <path>/<user>/ only) or shared (read-only for all); "
                                            "plain paths are refused; empty: no file:// URLs.",
                                        checked_by="caesar_rest.tes_access.check_settings")
    TES_TIME_LIMIT: float | None = setting(None, "Time limit (s) of a TES task's executors when its backend_parameters "
                                                 "give no time_limit; null: DEFAULT_TIME_LIMIT.")
    TES_MAX_CONTENT_BYTES: int = setting(1024 * 1024, "Largest inline 'content' of one TES input (the spec asks for at "
                                                      "least 128 KiB).")
    TES_MAX_TASK_BYTES: int = setting(2 * 1024 * 1024, "Largest TES task document accepted (413 above): one inline "
                                                       "content at its cap and the rest.")
    TES_MAX_CPU_CORES: int = setting(64, "Largest cpu_cores a TES task may request.")
    TES_PAGE_SIZE: int = setting(256, "Default page_size of the TES task list.")
    TES_LOG_TAIL_BYTES: int = setting(64 * 1024, "Bytes of each TES executor's stdout and stderr kept for the FULL "
                                                 "view (the tail).")
    TES_TRANSFER_TIMEOUT: float = setting(60.0, "Seconds a TES input/output transfer may wait on the network before "
                                                "failing.")
    TES_ORGANIZATION: dict[str, Any] = setting({"name": "caesar-rest", "url": "https://github.com/SKA-INAF/caesar-rest"},
                                               "Organization named by the TES service-info.")
    S3_ENDPOINT_URL: str | None = setting(None, "S3 endpoint (MinIO, moto, Ceph...); null: AWS.")
    S3_ACCESS_KEY_ID: str | None = setting(None, "S3 access key; null: boto3's usual credential chain.")
    S3_SECRET_ACCESS_KEY: str | None = setting(None, "S3 secret key; null: boto3's usual credential chain.",
                                               secret=True)
    S3_REGION: str = setting("us-east-1", "S3 region.")
    STORAGE: str = setting("local", "Where uploaded files live: local (DATA_DIR) or s3 (S3_BUCKET, streamed "
                                    "multipart).")
    S3_JOB_OUTPUTS: bool = setting(True, "With STORAGE s3, finished job directories move to S3 "
                                         "(<S3_PREFIX>jobs/<user>/<job_id>/).")
    LIVE_LOG_INTERVAL: float = setting(2.0, "With STORAGE s3, seconds between a worker's copies of a running job's "
                                            "stdout and stderr tails to S3 (<S3_PREFIX>live/<user>/<job_id>/), "
                                            "where the API reads them when the job runs on another host; 0: off.")
    S3_BUCKET: str | None = setting(None, "Bucket of uploaded files when STORAGE is s3.")
    S3_PREFIX: str = setting("caesar/data/", "Key prefix of uploaded files in S3_BUCKET (then "
                                             "<owner>/<uuid>.<format>).")
    S3_PART_BYTES: int = setting(8 * 1024 * 1024, "Multipart part size of S3 uploads (at least 5 MiB): the memory one "
                                                  "upload holds.")
    S3_PRESIGN_EXPIRY: int = setting(3600, "Seconds a presigned download URL (/download-id/<uuid>?presign=1) stays "
                                           "valid.")
    # ---- requests from browsers and hostile clients, secure production defaults (issue 19)
    ALLOW_ANONYMOUS: bool = setting(False, "Let AUTH_MODE none (every caller is the one admin user) serve under "
                                           "uWSGI/gunicorn or on a non-loopback address; without it the service "
                                           "refuses to start there.")
    ALLOWED_HOSTS: list[str] | str | None = setting(None, "Names the Host header may give (400 otherwise: DNS "
                                                          "rebinding); '.example.org' is the domain and its "
                                                          "subdomains, '*' any. null: unchecked, but `caesar-rest "
                                                          "serve/run` on loopback takes localhost, 127.0.0.1 and "
                                                          "[::1] only.")
    TRUSTED_ORIGINS: list[str] | str = setting([], "Browser origins (scheme://host[:port]) besides the service's own "
                                                   "that may send state-changing requests (others: 403) and get CORS "
                                                   "answers; empty: no CORS.")
    # ---- TES transfers: egress rules and S3 access (issue 19)
    EGRESS_ALLOWED_NETWORKS: list[str] = setting([], "Networks (CIDR) that transfers made for users (TES "
                                                     "http/https/ftp) may reach although loopback, link-local, "
                                                     "private, unique-local, multicast or otherwise not global; "
                                                     "empty: public addresses only.",
                                                 checked_by="caesar_rest.tes_access.check_settings")
    TES_MAX_INPUT_BYTES: int | None = setting(16 * 1024**3, "Largest TES input (a DIRECTORY input: all its files) a "
                                                            "worker fetches; the transfer fails above it. null: no "
                                                            "cap.", checked_by="caesar_rest.tes_access.check_settings")
    TES_S3_BUCKETS: list[Any] = setting([], "S3 buckets TES tasks may use without keys of their own: [{bucket, "
                                            "prefix?, users: [names] or '*', access: read|write|readwrite, "
                                            "endpoint_url?, region?, credentials?: {access_key_id, "
                                            "secret_access_key}}]; no credentials: unsigned requests. Users' own "
                                            "keys: AUTH_USERS.<name>.s3. The service's S3 keys never serve TES URLs.",
                                        checked_by="caesar_rest.tes_access.check_settings")
    # ---- notifications of job state changes (issue 21; caesar_rest/notify.py, workers/notify.py)
    NOTIFY_ATTEMPTS: int = setting(12, "Tries at delivering one notification before it is given up (recorded as "
                                       "failed; with the default backoff the last comes about 37 min after the "
                                       "first); a target the egress rules refuse is given up at once.")
    NOTIFY_BACKOFF: float = setting(2.0, "Seconds before the second try of a notification; each later try waits "
                                         "twice as long as the one before (2, 4, 8... s), up to NOTIFY_BACKOFF_MAX.")
    NOTIFY_BACKOFF_MAX: float = setting(600.0, "Longest wait (s) between two tries of a notification.")
    NOTIFY_TIMEOUT: float = setting(10.0, "Seconds a notification's receiver may take to accept the connection, and "
                                          "again to answer, before the try fails.")
    NOTIFY_SECRET: str | None = setting(None, "Key of the HMAC-SHA256 signature every notification carries "
                                              "(X-Caesar-Signature over '<X-Caesar-Timestamp>.<body>'); null: "
                                              "unsigned.", secret=True)
    NOTIFY_SWEEP_INTERVAL: float = setting(30.0, "Seconds between the control worker's sweeps that send again the "
                                                 "due notifications whose message was lost (a broker restart).")
    NOTIFY_THREADS: int = setting(8, "Notifications one control worker process sends at once (threads): a slow "
                                     "receiver holds one of them, never the control queue.")
    NOTIFY_MAX_SUBSCRIPTIONS: int = setting(8, "Notification targets one job may have.")
    # ---- job sandbox on worker hosts (issue 19)
    SANDBOX: str = setting("bwrap", "How local-backend jobs and TES host executors are isolated: bwrap (bubblewrap; "
                                    "the worker refuses to start when it cannot be set up) or none (UNSAFE: jobs run "
                                    "with the worker's own powers).")
    SANDBOX_USER: str | int = setting("nobody", "User (name, uid or uid:gid) sandboxed jobs run as when the worker is "
                                                "root; a dedicated user and group in production. A worker that is "
                                                "not root runs jobs as itself, in a user namespace.")
    SANDBOX_READ_ONLY_PATHS: list[str] = setting([], "Extra host directories every sandboxed job sees read-only "
                                                     "(beyond /usr, /etc, the Python prefix, the venv and the apps' "
                                                     "package).")
    SANDBOX_PIDS_MAX: int = setting(512, "Processes and threads one sandboxed job may have at once (its own control "
                                         "group's pids.max).")
    SANDBOX_MAX_OPEN_FILES: int = setting(1024, "Open files per process of a sandboxed job (RLIMIT_NOFILE).")
    SANDBOX_MAX_FILE_BYTES: int | None = setting(64 * 1024**3, "Largest file a sandboxed job may write "
                                                               "(RLIMIT_FSIZE); null: no limit.")
    SANDBOX_CGROUP: str = setting("auto", "Control group under which each sandboxed job gets its own (pids limit): "
                                          "auto (cgroup v2 when its pids controller can be enabled there, else the "
                                          "v1 pids hierarchy) or a cgroupfs directory delegated to the worker.")
    TES_HOST_NETWORK: bool = setting(False, "TES host-runtime executors get the host's network; off: a network "
                                            "namespace with only its own loopback.")
    TES_HOST_PATH: str = setting("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                 "PATH of TES host-runtime executors (absolute directories, ':'-separated); a "
                                 "directory outside the system's (/usr, /bin...) must also be in "
                                 "SANDBOX_READ_ONLY_PATHS to be seen. Never the service's own PATH.",
                                 checked_by="caesar_rest.tes_access.check_settings")
    TES_HOST_ENV: dict[str, str] = setting({}, "Further fixed variables of TES host-runtime executors, {NAME: value} "
                                               "(not PATH: TES_HOST_PATH), under the task's own env. Their "
                                               "environment is built from HOME (the executor's workdir, else /tmp), "
                                               "TMPDIR=/tmp, LANG=C.UTF-8, these and the task's: nothing of the "
                                               "service's environment.",
                                           checked_by="caesar_rest.tes_access.check_settings")
    # ---- containers hardened (issue 19)
    ALLOWED_IMAGES: list[str] | str = setting([], "Container images app jobs and TES executors may run (400 "
                                                  "otherwise): shell-style patterns matched against the full "
                                                  "reference, e.g. 'localhost/caesar-*' or "
                                                  "'docker.io/library/python:3.*' (a short name reads "
                                                  "docker.io/library/NAME:latest); empty: any image.")
    # ---- OGC API - Processes (issue 21; caesar_rest/ogc/, caesar_rest/api/ogc*.py)
    PUBLIC_URL: str | None = setting(None, "The service's root URL as clients reach it (https://caesar.example.org), "
                                           "for the absolute links of the OGC surface; null: from each request's "
                                           "Host (Debian's nginx uwsgi_params pass it without the port).")
    OGC_SYNC_WAIT: float = setting(240.0, "Longest wait (s) of a synchronous OGC execution for its job: a process "
                                          "whose app time limit is longer is async-execute only, and a job not ended "
                                          "by then is answered as an asynchronous one (201 and its status). Keep it "
                                          "below the proxy's read timeout (nginx/caesar-rest.conf: 300 s).")
    OGC_INLINE_MAX_BYTES: int = setting(4 * 1024**2, "Largest file (decoded) an OGC execute request may carry inline "
                                                     "(base64), and largest output a result gives by value; a larger "
                                                     "output is given by reference.")
    OGC_REMOTE_INPUT_TIMEOUT: float = setting(300.0, "Seconds an external http(s) href input may take to fetch in all "
                                                     "(the execute request waits for it; a slower one is a 400).")
    OGC_REMOTE_INPUT_MAX_BYTES: int = setting(1024**3, "Largest file an OGC input may name by an external http(s) "
                                                       "href (fetched under the egress rules when the job is "
                                                       "submitted, kept as an upload of its owner).")
    # ---- web dashboard (issue 17; caesar_rest/ui/)
    UI_SECRET_KEY: str | None = setting(None, "Key signing the dashboard's session cookies (/ui/); null: a random "
                                              "key kept in <ROOT>/ui-secret (0600), shared by every process of "
                                              "this host.", secret=True)
    UI_SESSION_SECONDS: int = setting(8 * 3600, "How long a dashboard sign-in lasts (s).")
    UI_TABLE_ROWS: int = setting(100, "Rows of a CSV output the job page shows as a table.")
    OIDC_AUTHORIZATION_URL: str | None = setting(None, "The issuer's authorization endpoint: with OIDC_TOKEN_URL and "
                                                       "OIDC_CLIENT_ID the dashboard signs users in (authorization "
                                                       "code with PKCE); null: no dashboard sign-in in AUTH_MODE oidc.")
    OIDC_TOKEN_URL: str | None = setting(None, "The issuer's token endpoint (the dashboard's sign-in).")
    OIDC_CLIENT_ID: str | None = setting(None, "The dashboard's client id at the issuer.")
    OIDC_CLIENT_SECRET: str | None = setting(None, "The dashboard's client secret (a confidential client, sent by HTTP "
                                                   "Basic to the token endpoint); null: a public client, PKCE alone.",
                                               secret=True)
    OIDC_SCOPES: str = setting("openid profile", "Scopes the dashboard's sign-in asks for (openid among them).")
    # ---- derived from ROOT, never set
    DATA_DIR: str = derived("Uploaded files, <ROOT>/data/<user>/ (derived from ROOT).")
    JOBS_DIR: str = derived("Job directories, <ROOT>/jobs/<user>/<job_id>/ (derived from ROOT).")

    def __post_init__(self) -> None:
        """Check every value by type, then derive the settings that depend on others (paths become absolute)."""
        for f in fields(self):
            if not f.metadata.get("derived"):
                object.__setattr__(self, f.name, _checked(f.name, getattr(self, f.name)))
        root = Path(self.ROOT).expanduser().resolve()
        derived_values: dict[str, Any] = {"ROOT": str(root), "DATA_DIR": str(root / "data"),
                                          "JOBS_DIR": str(root / "jobs"),
                                          "DATABASE_URL": self.DATABASE_URL or f"sqlite:///{root / 'caesar.db'}",
                                          "RESULT_BACKEND": self.RESULT_BACKEND or f"file://{root / 'results'}",
                                          "APPS_DIR": str(Path(self.APPS_DIR).expanduser().resolve())}
        backends = self.BACKENDS or {}
        derived_values["BACKENDS"] = {name: {} for name in backends} if isinstance(backends, list) else backends
        for name, value in derived_values.items():
            object.__setattr__(self, name, value)

    def __getitem__(self, key: str) -> Any:
        if key in _FIELDS:
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELDS)

    def __len__(self) -> int:
        return len(_FIELDS)

    def __contains__(self, key: object) -> bool:
        return key in _FIELDS

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """A Settings from a plain mapping over the defaults (no file, no environment); a Settings as it is."""
        return values if isinstance(values, Settings) else load_settings(values, environ={})


_FIELDS = {f.name: f for f in fields(Settings)}
#: The keys the file, the environment and a mapping may set (the derived ones are computed).
SETTABLE = frozenset(name for name, f in _FIELDS.items() if not f.metadata.get("derived"))
#: Each settable key's default and one-line doc (the table settings were once kept in).
DEFAULTS: dict[str, tuple[Any, str]] = {
    name: (f.default if f.default is not MISSING else typing.cast(Callable[[], Any], f.default_factory)(),
           f.metadata["doc"])
    for name, f in _FIELDS.items() if name in SETTABLE}
_HINTS: dict[str, Any] = {}


def setting_doc(key: str) -> str:
    return str(_FIELDS[key].metadata["doc"])


def _kinds(key: str) -> tuple[type, ...]:
    """The runtime classes a setting's annotation admits (object for Any)."""
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(Settings))
    hint = _HINTS[key]
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(object if o is Any else (typing.get_origin(o) or o) for o in options)


def _checked(key: str, value: Any) -> Any:
    """value if it fits the setting's type (a bool from its usual spellings, a whole float as an int), else an error
    naming the key and the value. Settings whose shape is checked where they are used pass as they are."""
    kinds = _kinds(key)
    if object in kinds or _FIELDS[key].metadata.get("checked_by"):
        return value
    if value is None and type(None) in kinds:
        return None
    if bool in kinds:
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
    elif not isinstance(value, bool):
        if int in kinds and isinstance(value, int):
            return value
        if float in kinds and isinstance(value, int | float):
            return value
        if int in kinds and isinstance(value, float) and value.is_integer():
            return int(value)
    if str in kinds and isinstance(value, str):
        return value
    if list in kinds and isinstance(value, list | tuple):
        return list(value)
    if dict in kinds and isinstance(value, Mapping):
        return dict(value)
    expected = "a number" if {int, float} & set(kinds) else _FIELDS[key].type
    raise SettingsError(f"setting {key} must be {expected}, not {value!r}")


def _unknown(key: str, where: str) -> SettingsError:
    if key in _FIELDS:
        return SettingsError(f"setting {key} ({where}) is derived from ROOT and cannot be set")
    close = difflib.get_close_matches(key.upper(), SETTABLE, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return SettingsError(f"unknown setting {key} ({where}): {hint}`caesar-rest settings` lists them all")


def _known(values: Mapping[str, Any], where: str, derived_ok: bool = False) -> dict[str, Any]:
    """values with upper-case keys, each one a setting; derived keys dropped when derived_ok (a mapping that came
    from a Settings, such as {**settings, "X": y}, carries them), an error otherwise."""
    known: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).upper()
        if key in SETTABLE:
            known[key] = value
        elif not (derived_ok and key in _FIELDS):
            raise _unknown(str(raw_key), where)
    return known


def _env_value(key: str, raw: str) -> Any:
    """Env values are JSON when they parse as JSON (numbers, lists, objects, true/false, null), else strings; a
    setting that takes a string keeps the text when its JSON reading does not fit (CAESAR_S3_PREFIX=2024)."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    kinds = _kinds(key)
    if str in kinds and not (value is None and type(None) in kinds) and not isinstance(value, kinds):
        return raw
    return value


def is_setting_env(name: str) -> bool:
    """Whether an environment variable is read as a setting: CAESAR_*, less the documented non-setting ones."""
    return name.startswith(ENV_PREFIX) and name not in NON_SETTING_ENV and not name.startswith(NON_SETTING_ENV_PREFIXES)


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings in the fixed order: defaults, file, environment, overrides. An unknown key in any of
    them is a SettingsError naming it (and the likely intended key)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = environ.get("CAESAR_CONFIG")
    if path:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, Mapping):
            raise SettingsError(f"{path} (CAESAR_CONFIG) must hold a mapping of settings, not {type(data).__name__}")
        values.update(_known(data, f"in {path}"))
    for name, raw in environ.items():
        if is_setting_env(name):
            key = name[len(ENV_PREFIX):]
            if key not in SETTABLE:
                raise _unknown(key, f"environment variable {name}")
            values[key] = _env_value(key, raw)
    if overrides:
        values.update(_known(overrides, "in the settings passed in", derived_ok=True))
    return Settings(**values)


_URL_SECRET = re.compile(r"secret|password|token|credential", re.IGNORECASE)


def redacted(key: str, value: Any) -> Any:
    """value as `caesar-rest settings` shows it: a secret setting as '***', passwords in URLs and secret-named
    entries of maps (AUTH_USERS' hashes and tokens, S3 credentials) hidden."""
    if _FIELDS[key].metadata.get("secret") and value:
        return "***"
    return _hide(value)


def _hide(value: Any) -> Any:
    from .egress import redact

    if isinstance(value, str) and "://" in value and "@" in value:
        return redact(value)
    if isinstance(value, Mapping):
        return {k: "***" if v and _URL_SECRET.search(str(k)) else _hide(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide(v) for v in value]
    return value


def queue_name(settings: Mapping[str, Any], backend: str) -> str:
    """The Celery queue a backend's worker pool consumes."""
    return f"{settings.get('QUEUE_PREFIX', '')}{backend}"
