"""What a TES task's URLs may reach, for the user who sent it: file:// roots (per user, or shared read-only), S3
buckets (never the service's own storage; others only as an operator opened them or with the user's own
credentials) and, for http(s)/ftp, the egress rules (caesar_rest.egress). The API checks at submission and the
worker again before every transfer, from the same functions.

Settings:
  TES_FILE_ROOTS  [{path: /srv/tes, scope: user}, {path: /srv/reference, scope: shared}]
                  scope user: each user reads and writes <path>/<user>/ only; scope shared: everyone reads, no one
                  writes.
  TES_S3_BUCKETS  [{bucket, prefix?, users: [names] | "*", access: read | write | readwrite, endpoint_url?,
                    region?, credentials?: {access_key_id, secret_access_key, session_token?}}]
                  buckets (or a prefix of one) an operator opens; without credentials requests go unsigned.
  AUTH_USERS[name].s3  {access_key_id, secret_access_key, session_token?, endpoint_url?, region?}: a user's own
                  keys, used for buckets no entry above opens to them (the far side decides what they reach).
The service's S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY are never used for a user's URL.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from . import storage
from .errors import CaesarError

READ, WRITE = "read", "write"
ACCESS = {"read": {READ}, "write": {WRITE}, "readwrite": {READ, WRITE}}
SCOPES = ("user", "shared")
# S3's own rule for bucket names: no user@, no port, no upper case to slip past the comparisons below.
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ENTRY_KEYS = {"bucket", "prefix", "users", "access", "endpoint_url", "region", "credentials"}
CREDENTIAL_KEYS = {"access_key_id", "secret_access_key", "session_token"}
USER_S3_KEYS = CREDENTIAL_KEYS | {"endpoint_url", "region"}


class AccessConfigError(CaesarError):
    """TES_FILE_ROOTS, TES_S3_BUCKETS or AUTH_USERS[...].s3 cannot be used as written (raised at start)."""


class Refused(Exception):
    """A URL this user may not reach; str() says why (the caller names the URL and the field)."""


# ---- file:// ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileRoot:
    path: str
    scope: str             # "user" or "shared"


def file_root_rules(settings: Mapping[str, Any]) -> list[FileRoot]:
    raw = settings.get("TES_FILE_ROOTS") or []
    if not isinstance(raw, list):
        raw = [raw]
    roots = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise AccessConfigError(
                f"TES_FILE_ROOTS[{i}] is {item!r}: entries are objects now, {{path: /srv/tes, scope: user}} (each "
                "user reads and writes <path>/<user>/) or {path: ..., scope: shared} (read-only for everyone); a "
                "plain path used to be shared read-write by every user and is no longer accepted")
        unknown = set(item) - {"path", "scope"}
        path, scope = item.get("path"), item.get("scope")
        if unknown or not isinstance(path, str) or not path.startswith("/") or scope not in SCOPES:
            raise AccessConfigError(f"TES_FILE_ROOTS[{i}]: needs 'path' (absolute) and 'scope' (user or shared)"
                                    + (f"; unknown keys {sorted(unknown)}" if unknown else ""))
        roots.append(FileRoot(path, scope))
    return roots


def file_url_path(url: str) -> str | None:
    """Local path of a file:// URL (or a bare absolute path); None when the URL names another host."""
    if url.startswith("/"):
        return url
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        return None
    return unquote(parts.path)


def allowed_file_path(settings: Mapping[str, Any], owner: str, path: str, access: str) -> str:
    """path resolved (links too), if owner may read (access READ) or write it; else Refused saying why."""
    roots = file_root_rules(settings)
    if not roots:
        raise Refused("file:// URLs are not enabled here (TES_FILE_ROOTS is empty)")
    shared_hit = False
    for root in roots:
        base = storage.user_dir(root.path, owner) if root.scope == "user" else Path(root.path)
        real = storage.within(base, path)
        if real is None:
            continue
        if root.scope == "shared" and access == WRITE:
            shared_hit = True
            continue
        return str(real)
    if shared_hit:
        raise Refused(f"{path!r} is in a shared read-only directory; outputs go under your own directory")
    yours = [f"{r.path.rstrip('/')}/{owner}/" for r in roots if r.scope == "user"]
    shared = [r.path for r in roots if r.scope == "shared"] if access == READ else []
    return _raise_outside(path, yours, shared)


def _raise_outside(path: str, yours: list[str], shared: list[str]) -> str:
    where = [f"your directory {y}" for y in yours] + [f"the shared read-only {s}" for s in shared]
    raise Refused(f"{path!r} is outside the directories this service may use for you ("
                  f"{', '.join(where) if where else 'none for this access'})")


# ---- s3:// -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Access:
    """How one s3:// URL is reached: where, and with whose keys (no keys: unsigned requests)."""

    bucket: str
    key: str
    endpoint_url: str | None
    region: str | None
    access_key_id: str | None
    secret_access_key: str | None
    session_token: str | None
    via: str                     # which setting granted it, for messages


def bucket_key(url: str) -> tuple[str, str]:
    """Bucket and key of s3://bucket/key, as the transfers use them (the key percent-decoded)."""
    parts = urlsplit(url)
    return parts.netloc, unquote(parts.path.lstrip("/"))


def service_areas(settings: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(bucket, key prefix, what it is) of the service's own S3 storage: uploads and archived jobs (S3_BUCKET,
    S3_PREFIX and its jobs/), and the Batch backend's staging area."""
    areas = []
    if settings.get("S3_BUCKET"):
        areas.append((str(settings["S3_BUCKET"]), str(settings.get("S3_PREFIX") or ""), "S3_BUCKET/S3_PREFIX"))
    batch = (settings.get("BACKENDS") or {}).get("batch") or {}
    if isinstance(batch, dict) and batch.get("bucket"):
        areas.append((str(batch["bucket"]), str(batch.get("prefix", "caesar/batch/")), "BACKENDS.batch"))
    return areas


def _span(key: str, directory: bool) -> str:
    """The key prefix a URL reaches: the key itself for a file, everything below it for a directory."""
    if not directory:
        return key
    return key.rstrip("/") + "/" if key.strip("/") else ""


def _overlaps(span: str, directory: bool, prefix: str) -> bool:
    return span.startswith(prefix) or (directory and prefix.startswith(span))


def _entries(settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = settings.get("TES_S3_BUCKETS") or []
    if not isinstance(raw, list):
        raise AccessConfigError("TES_S3_BUCKETS must be a list of {bucket, prefix?, users, access, ...}")
    entries = []
    for i, item in enumerate(raw):
        where = f"TES_S3_BUCKETS[{i}]"
        if not isinstance(item, dict) or set(item) - ENTRY_KEYS:
            raise AccessConfigError(f"{where}: an object with keys from {sorted(ENTRY_KEYS)}")
        bucket, users, access = item.get("bucket"), item.get("users"), item.get("access")
        if not isinstance(bucket, str) or not BUCKET_RE.match(bucket):
            raise AccessConfigError(f"{where}: 'bucket' must be an S3 bucket name, not {bucket!r}")
        if users != "*" and not (isinstance(users, list) and all(isinstance(u, str) for u in users)):
            raise AccessConfigError(f"{where}: 'users' must be a list of user names or \"*\" (everyone)")
        if access not in ACCESS:
            raise AccessConfigError(f"{where}: 'access' must be read, write or readwrite, not {access!r}")
        prefix = str(item.get("prefix") or "").lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"                    # "pub" must not open "public-secrets/"
        credentials = item.get("credentials")
        if credentials is not None and not _credentials_ok(credentials):
            raise AccessConfigError(f"{where}: 'credentials' needs access_key_id and secret_access_key "
                                    "(session_token optional)")
        for svc_bucket, svc_prefix, what in service_areas(settings):
            if bucket == svc_bucket and _overlaps(prefix, True, svc_prefix):
                raise AccessConfigError(f"{where}: s3://{bucket}/{prefix} takes in the service's own storage "
                                        f"({what}: s3://{svc_bucket}/{svc_prefix}); open a prefix beside it")
        entries.append({**item, "prefix": prefix, "index": i})
    return entries


def _credentials_ok(value: Any) -> bool:
    return (isinstance(value, dict) and not set(value) - CREDENTIAL_KEYS
            and all(isinstance(value.get(k), str) and value.get(k) for k in ("access_key_id", "secret_access_key")))


def _user_s3(settings: Mapping[str, Any], owner: str) -> dict[str, Any] | None:
    record = (settings.get("AUTH_USERS") or {}).get(owner)
    return record.get("s3") if isinstance(record, dict) else None


def s3_access(settings: Mapping[str, Any], owner: str, url: str, access: str, directory: bool) -> S3Access:
    """How owner reaches url for access (READ for inputs, WRITE for outputs); Refused otherwise."""
    bucket, key = bucket_key(url)
    if not BUCKET_RE.match(bucket):
        raise Refused(f"{bucket!r} is not an S3 bucket name (s3://bucket/key)")
    span = _span(key, directory)
    for svc_bucket, svc_prefix, what in service_areas(settings):
        if bucket == svc_bucket and _overlaps(span, directory, svc_prefix):
            raise Refused(f"this is the service's own storage ({what}: s3://{svc_bucket}/{svc_prefix}); "
                          "TES tasks never read or write it")
    for entry in _entries(settings):
        users = entry["users"]
        if (entry["bucket"] == bucket and span.startswith(entry["prefix"]) and access in ACCESS[entry["access"]]
                and (users == "*" or owner in users)):
            creds = entry.get("credentials") or {}
            return S3Access(bucket, key, entry.get("endpoint_url") or settings.get("S3_ENDPOINT_URL") or None,
                            entry.get("region") or settings.get("S3_REGION") or None, creds.get("access_key_id"),
                            creds.get("secret_access_key"), creds.get("session_token"),
                            f"TES_S3_BUCKETS[{entry['index']}]")
    mine = _user_s3(settings, owner)
    own_bucket = any(bucket == b for b, _p, _w in service_areas(settings))
    if mine and not own_bucket:
        return S3Access(bucket, key, mine.get("endpoint_url") or settings.get("S3_ENDPOINT_URL") or None,
                        mine.get("region") or settings.get("S3_REGION") or None, mine["access_key_id"],
                        mine["secret_access_key"], mine.get("session_token"), f"AUTH_USERS.{owner}.s3")
    if own_bucket:
        raise Refused(f"bucket {bucket!r} holds the service's own storage; only the parts TES_S3_BUCKETS opens "
                      f"are reachable, and none opens this one to you for {access}")
    raise Refused(f"no S3 access for you to {access} bucket {bucket!r}: TES_S3_BUCKETS opens it to you for "
                  f"no such access and no S3 credentials of yours are configured (AUTH_USERS.<you>.s3)")


# ---- at start --------------------------------------------------------------------------------------------------
def check_settings(settings: Mapping[str, Any]) -> None:
    """Fail at start (API and workers) when these settings cannot be used as written."""
    from .egress import EgressError, Rules

    file_root_rules(settings)
    _entries(settings)
    _host_environment(settings)
    for name, record in (settings.get("AUTH_USERS") or {}).items():
        mine = record.get("s3") if isinstance(record, dict) else None
        if mine is None:
            continue
        if not isinstance(mine, dict) or set(mine) - USER_S3_KEYS or not _credentials_ok(
                {k: v for k, v in mine.items() if k in CREDENTIAL_KEYS}):
            raise AccessConfigError(f"AUTH_USERS.{name}.s3: needs access_key_id and secret_access_key "
                                    f"(keys allowed: {sorted(USER_S3_KEYS)})")
    try:
        Rules.from_settings(settings)
    except EgressError as exc:
        raise AccessConfigError(str(exc)) from None
    cap = settings.get("TES_MAX_INPUT_BYTES")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0):
        raise AccessConfigError(f"TES_MAX_INPUT_BYTES must be a positive whole number of bytes or null, not {cap!r}")


ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _host_environment(settings: Mapping[str, Any]) -> None:
    """TES_HOST_PATH: absolute directories; TES_HOST_ENV: {NAME: string}, PATH excluded (TES_HOST_PATH says it)."""
    path = settings.get("TES_HOST_PATH", "/usr/bin:/bin")
    if not isinstance(path, str) or not path or any(not d.startswith("/") or "\x00" in d for d in path.split(":")):
        raise AccessConfigError(f"TES_HOST_PATH must be absolute directories separated by ':', not {path!r}")
    env = settings.get("TES_HOST_ENV") or {}
    if not isinstance(env, Mapping):
        raise AccessConfigError("TES_HOST_ENV must be a mapping of variable names to strings")
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME_RE.match(name) or not isinstance(value, str) or "\x00" in value:
            raise AccessConfigError(f"TES_HOST_ENV: {name!r} must be a variable name with a string value")
        if name == "PATH":
            raise AccessConfigError("TES_HOST_ENV cannot set PATH: TES_HOST_PATH is the executors' PATH")
