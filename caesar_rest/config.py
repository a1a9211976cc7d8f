"""Settings: defaults in code, then a YAML file named by CAESAR_CONFIG, then CAESAR_* env vars, then a mapping."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

PROJECT_DIR = Path(__file__).resolve().parent.parent

#: Each default with a one-line description; `caesar-rest settings` prints them.
DEFAULTS: dict[str, tuple[Any, str]] = {
    "ROOT": ("var", "Directory holding data/, jobs/, the embedded database and broker folders."),
    "DATABASE_URL": (None, "SQLAlchemy URL of the job database; default sqlite:///<ROOT>/caesar.db."),
    "BROKER_URL": ("filesystem://", "Celery broker: filesystem:// (embedded), amqp://..., redis://..."),
    "RESULT_BACKEND": (None, "Celery result store; default file://<ROOT>/results (embedded). Job state never lives only here."),
    "QUEUE_PREFIX": ("", "Prefix for every Celery queue name (lets several deployments share one broker)."),
    "APPS_DIR": (str(PROJECT_DIR / "config" / "apps"), "Directory of app YAML files, one app each."),
    "MAX_UPLOAD_BYTES": (64 * 1024**3, "Largest accepted upload (413 above)."),
    "ALLOWED_FORMATS": (None, "List of accepted upload extensions (415 otherwise); null accepts any."),
    "STALE_UPLOAD_AFTER": (3600.0, "Part files of unfinished uploads older than this (s) are removed at start and by the reaper."),
    "MAX_JSON_BYTES": (1024 * 1024, "Largest accepted JSON request body (413 above)."),
    "UPLOAD_CHUNK_BYTES": (1024 * 1024, "Read size while streaming uploads and downloads."),
    "DEFAULT_BACKEND": ("local", "Backend used when an app names none."),
    "BACKENDS": ({"local": {}}, "Enabled backends and their settings, by name."),
    "JOB_POLL_INTERVAL": (0.25, "Seconds between checks of a running in-slot job (cancel flag, time limit)."),
    "REMOTE_POLL_INTERVAL": (2.0, "Seconds between polls of a remote (non-blocking) job."),
    "REMOTE_UNREACHABLE_TIMEOUT": (300.0, "Seconds a remote backend may stay unreachable before its jobs fail."),
    "HEARTBEAT_INTERVAL": (5.0, "Seconds between heartbeats of a running job."),
    "STALE_AFTER": (60.0, "A running job with no heartbeat for this long is declared lost by the reaper."),
    "PENDING_REPUBLISH_AFTER": (600.0, "A PENDING job older than this is published again (claims are atomic)."),
    "REAPER_INTERVAL": (15.0, "Seconds between reaper runs (celery beat)."),
    "DB_RETRY_FOR": (600.0, "Seconds a worker keeps retrying to record a finished job while the database is down."),
    "CANCEL_GRACE": (1.0, "Seconds between SIGTERM and SIGKILL when stopping a job."),
    "DEFAULT_TIME_LIMIT": (86400, "Time limit (s) for apps that declare none."),
    "OUTPUT_GZIP_LEVEL": (6, "gzip level of the streamed job tarball (1 fastest, 9 smallest)."),
    "OUTPUT_INCLUDE_INPUTS": (False, "Include the staged inputs/ directory in the job tarball."),
    "JOBS_PAGE_SIZE": (50, "Default page size of GET /jobs."),
    "JOBS_COUNT_LIMIT": (10000, "GET /jobs counts matching jobs up to this many; beyond it 'total' and 'pages' are "
                                "null and 'total_exceeds' gives the limit ('has_next' always says whether a next "
                                "page exists). 0 counts every row (slow on big tables)."),
    "DEFAULT_USER": ("anonymous", "Owner of every file and job when authentication is off."),
    "LOG_LEVEL": ("INFO", "Python log level."),
    "LOG_JSON": (False, "Log lines as JSON objects (access lines with method, path, status, duration_ms, request_id)."),
    "ACCEL_REDIRECT": (False, "Behind nginx: downloads answered with X-Accel-Redirect, nginx sends the file (nginx/caesar-rest.conf)."),
    "ACCEL_REDIRECT_PREFIX": ("/_caesar_data/", "nginx's internal location aliasing DATA_DIR, used when ACCEL_REDIRECT is on."),
    "METRICS_DIR": (None, "Directory of the per-host counter file all API processes share; default <ROOT>/metrics."),
    "HEALTH_TIMEOUT": (5.0, "Seconds /health waits for each check before reporting it down."),
    "HEALTH_REQUIRED_BACKENDS": (None, "Backends whose failed check makes /health answer 503; default [DEFAULT_BACKEND]."),
    "AUTH_MODE": ("none", "none (one anonymous user), token (Bearer API tokens), basic (HTTP Basic) or oidc (JWT bearer)."),
    "AUTH_USERS": ({}, "Users for token/basic modes: {name: {password_hash, tokens_sha256: [...], admin, max_active_jobs, max_stored_bytes}}."),
    "OIDC_ISSUER": (None, "Expected 'iss' of OIDC bearer tokens."),
    "OIDC_AUDIENCE": (None, "Expected 'aud' of OIDC bearer tokens."),
    "OIDC_JWKS_URL": (None, "URL of the issuer's JSON Web Key Set."),
    "OIDC_ALGORITHMS": (["RS256", "ES256"], "Accepted JWT signature algorithms (asymmetric only)."),
    "OIDC_USERNAME_CLAIM": ("preferred_username", "Claim that names the user."),
    "OIDC_ROLES_CLAIM": ("roles", "Claim listing the user's roles."),
    "OIDC_ADMIN_ROLE": ("caesar-admin", "Role that makes a user an admin (sees and cancels every job)."),
    "OIDC_LEEWAY": (30, "Seconds of clock skew tolerated on exp/nbf/iat."),
    "MAX_ACTIVE_JOBS_PER_USER": (None, "Queued + running jobs a user may have at once (429 above); null: no limit."),
    "MAX_STORED_BYTES_PER_USER": (None, "Bytes of uploaded files a user may keep (507 above); null: no limit."),
    "TES_HOST_RUNTIME": (False, "TES executors run as host processes on the local backend, in the job sandbox (image recorded, not used); off: TES tasks need the container backend."),
    "TES_FILE_ROOTS": ([], "Directories for TES file:// URLs, each {path, scope}: scope user (a user reads and writes <path>/<user>/ only) or shared (read-only for all); plain paths are refused; empty: no file:// URLs."),
    "TES_TIME_LIMIT": (None, "Time limit (s) of a TES task's executors when its backend_parameters give no time_limit; null: DEFAULT_TIME_LIMIT."),
    "TES_MAX_CONTENT_BYTES": (1024 * 1024, "Largest inline 'content' of one TES input (the spec asks for at least 128 KiB)."),
    "TES_MAX_TASK_BYTES": (2 * 1024 * 1024, "Largest TES task document accepted (413 above): one inline content at its cap and the rest."),
    "TES_MAX_CPU_CORES": (64, "Largest cpu_cores a TES task may request."),
    "TES_PAGE_SIZE": (256, "Default page_size of the TES task list."),
    "TES_LOG_TAIL_BYTES": (64 * 1024, "Bytes of each TES executor's stdout and stderr kept for the FULL view (the tail)."),
    "TES_TRANSFER_TIMEOUT": (60.0, "Seconds a TES input/output transfer may wait on the network before failing."),
    "TES_ORGANIZATION": ({"name": "caesar-rest", "url": "https://github.com/SKA-INAF/caesar-rest"}, "Organization named by the TES service-info."),
    "S3_ENDPOINT_URL": (None, "S3 endpoint (MinIO, moto, Ceph...); null: AWS."),
    "S3_ACCESS_KEY_ID": (None, "S3 access key; null: boto3's usual credential chain."),
    "S3_SECRET_ACCESS_KEY": (None, "S3 secret key; null: boto3's usual credential chain."),
    "S3_REGION": ("us-east-1", "S3 region."),
    "STORAGE": ("local", "Where uploaded files live: local (DATA_DIR) or s3 (S3_BUCKET, streamed multipart)."),
    "S3_JOB_OUTPUTS": (True, "With STORAGE s3, finished job directories move to S3 (<S3_PREFIX>jobs/<user>/<job_id>/)."),
    "S3_BUCKET": (None, "Bucket of uploaded files when STORAGE is s3."),
    "S3_PREFIX": ("caesar/data/", "Key prefix of uploaded files in S3_BUCKET (then <owner>/<uuid>.<format>)."),
    "S3_PART_BYTES": (8 * 1024 * 1024, "Multipart part size of S3 uploads (at least 5 MiB): the memory one upload holds."),
    "S3_PRESIGN_EXPIRY": (3600, "Seconds a presigned download URL (/download-id/<uuid>?presign=1) stays valid."),
    # ---- requests from browsers and hostile clients, secure production defaults (issue 19)
    "ALLOW_ANONYMOUS": (False, "Let AUTH_MODE none (every caller is the one admin user) serve under uWSGI/gunicorn or on "
                               "a non-loopback address; without it the service refuses to start there."),
    "ALLOWED_HOSTS": (None, "Names the Host header may give (400 otherwise: DNS rebinding); '.example.org' is the domain "
                            "and its subdomains, '*' any. null: unchecked, but `caesar-rest serve/run` on loopback "
                            "takes localhost, 127.0.0.1 and [::1] only."),
    "TRUSTED_ORIGINS": ([], "Browser origins (scheme://host[:port]) besides the service's own that may send state-changing "
                            "requests (others: 403) and get CORS answers; empty: no CORS."),
    # ---- TES transfers: egress rules and S3 access (issue 19)
    "EGRESS_ALLOWED_NETWORKS": ([], "Networks (CIDR) that transfers made for users (TES http/https/ftp) may reach although loopback, link-local, private, unique-local, multicast or otherwise not global; empty: public addresses only."),
    "TES_MAX_INPUT_BYTES": (16 * 1024**3, "Largest TES input (a DIRECTORY input: all its files) a worker fetches; the transfer fails above it. null: no cap."),
    "TES_S3_BUCKETS": ([], "S3 buckets TES tasks may use without keys of their own: [{bucket, prefix?, users: [names] or '*', access: read|write|readwrite, endpoint_url?, region?, credentials?: {access_key_id, secret_access_key}}]; no credentials: unsigned requests. Users' own keys: AUTH_USERS.<name>.s3. The service's S3 keys never serve TES URLs."),
    # ---- job sandbox on worker hosts (issue 19)
    "SANDBOX": ("bwrap", "How local-backend jobs and TES host executors are isolated: bwrap (bubblewrap; the worker refuses to start when it cannot be set up) or none (UNSAFE: jobs run with the worker's own powers)."),
    "SANDBOX_USER": ("nobody", "User (name, uid or uid:gid) sandboxed jobs run as when the worker is root; a dedicated user and group in production. A worker that is not root runs jobs as itself, in a user namespace."),
    "SANDBOX_READ_ONLY_PATHS": ([], "Extra host directories every sandboxed job sees read-only (beyond /usr, /etc, the Python prefix, the venv and the apps' package)."),
    "SANDBOX_PIDS_MAX": (512, "Processes and threads one sandboxed job may have at once (its own control group's pids.max)."),
    "SANDBOX_MAX_OPEN_FILES": (1024, "Open files per process of a sandboxed job (RLIMIT_NOFILE)."),
    "SANDBOX_MAX_FILE_BYTES": (64 * 1024**3, "Largest file a sandboxed job may write (RLIMIT_FSIZE); null: no limit."),
    "SANDBOX_CGROUP": ("auto", "Control group under which each sandboxed job gets its own (pids limit): auto (cgroup v2 when its pids controller can be enabled there, else the v1 pids hierarchy) or a cgroupfs directory delegated to the worker."),
    "TES_HOST_NETWORK": (False, "TES host-runtime executors get the host's network; off: a network namespace with only its own loopback."),
    # ---- containers hardened (issue 19)
    "ALLOWED_IMAGES": ([], "Container images app jobs and TES executors may run (400 otherwise): shell-style patterns matched against the full reference, e.g. 'localhost/caesar-*' or 'docker.io/library/python:3.*' (a short name reads docker.io/library/NAME:latest); empty: any image."),
}


def _env_value(raw: str) -> Any:
    """Env values are JSON when they parse as JSON (numbers, lists, objects, true/false), else strings."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Build the settings mapping in the fixed order: defaults, file, environment, overrides."""
    environ = os.environ if environ is None else environ
    settings: dict[str, Any] = {key: value for key, (value, _doc) in DEFAULTS.items()}
    path = environ.get("CAESAR_CONFIG")
    if path:
        with open(path, encoding="utf-8") as fh:
            settings.update({k.upper(): v for k, v in (yaml.safe_load(fh) or {}).items()})
    for key, raw in environ.items():
        if key.startswith("CAESAR_") and key != "CAESAR_CONFIG":
            settings[key[len("CAESAR_"):]] = _env_value(raw)
    if overrides:
        settings.update({k.upper(): v for k, v in overrides.items()})
    return finish(settings)


def finish(settings: dict[str, Any]) -> dict[str, Any]:
    """Derive the settings that depend on ROOT; paths become absolute."""
    root = Path(settings["ROOT"]).expanduser().resolve()
    settings["ROOT"] = str(root)
    settings["DATA_DIR"] = str(root / "data")
    settings["JOBS_DIR"] = str(root / "jobs")
    if not settings.get("DATABASE_URL"):
        settings["DATABASE_URL"] = f"sqlite:///{root / 'caesar.db'}"
    if not settings.get("RESULT_BACKEND"):
        settings["RESULT_BACKEND"] = f"file://{root / 'results'}"
    settings["APPS_DIR"] = str(Path(settings["APPS_DIR"]).expanduser().resolve())
    backends = settings.get("BACKENDS") or {}
    if isinstance(backends, list):
        backends = {name: {} for name in backends}
    settings["BACKENDS"] = backends
    return settings


def queue_name(settings: Mapping[str, Any], backend: str) -> str:
    """The Celery queue a backend's worker pool consumes."""
    return f"{settings.get('QUEUE_PREFIX', '')}{backend}"
