"""OGC API - Processes fixtures: the API and a worker as real processes (embedded default, token auth for two users
and an admin), and a validator of responses against the standard's 1.0 schemas."""
from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from jsonschema import Draft4Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from caesar_rest.auth import hash_token

from ..support import (
    REPO,
    create_pg_database,
    drop_pg_database,
    embedded_settings,
    production_settings,
    start_api,
    start_worker,
    write_apps,
)

SCHEMAS = REPO / "caesar_rest" / "specs" / "ogcapi-processes-1.0" / "core" / "openapi" / "schemas"
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789", "root": "root-token-0123456789"}
USERS = {name: {"tokens_sha256": [hash_token(token)], **({"admin": True} if name == "root" else {})}
         for name, token in TOKENS.items()}
NOTIFY_SECRET = "ogc-callback-secret"
#: A sleeper whose time limit is longer than OGC_SYNC_WAIT: it cannot run synchronously.
LONG_SLEEPER = """
name: long-sleeper
version: "1.0"
command: [caesar-sleeper]
backends: [local]
resources: {time_limit: 7200}
outputs: [sleeper.txt]
options:
  seconds: {type: float, default: 0}
"""


@pytest.fixture(scope="session", params=["embedded", "production"])
def ogc_stack(request, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """The embedded default (SQLite, filesystem broker) and production (PostgreSQL, RabbitMQ, Redis) stacks."""
    root = tmp_path_factory.mktemp(f"ogc-{request.param}")
    db_url = create_pg_database() if request.param == "production" else None
    make = embedded_settings if db_url is None else functools.partial(production_settings, database_url=db_url)
    settings = make(root / "var", AUTH_MODE="token", AUTH_USERS=USERS, OGC_SYNC_WAIT=3600,
                    OGC_INLINE_MAX_BYTES=64 * 1024, EGRESS_ALLOWED_NETWORKS=["127.0.0.0/8"],
                    APPS_DIR=str(write_apps(root / "apps", {"long-sleeper": LONG_SLEEPER})),
                    STALE_AFTER=20, NOTIFY_SECRET=NOTIFY_SECRET, NOTIFY_BACKOFF=0.5, OGC_REMOTE_INPUT_TIMEOUT=3)
    api, base = start_api(settings, root / "api.log")
    worker = start_worker(settings, ["local"], root / "worker.log", concurrency=2, beat=True)
    yield {"base": base, "ogc": base + "/ogcapi", "settings": settings, "root": root, "api": api, "worker": worker}
    worker.stop()
    api.stop()
    if db_url:
        drop_pg_database(db_url)


def session_for(user: str) -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {TOKENS[user]}"
    return s


@pytest.fixture
def alice() -> requests.Session:
    return session_for("alice")


@pytest.fixture
def bob() -> requests.Session:
    return session_for("bob")


@pytest.fixture
def admin() -> requests.Session:
    return session_for("root")


def _retrieve(uri: str) -> Resource:
    return Resource.from_contents(yaml.safe_load(Path(uri.removeprefix("file://")).read_text()),
                                  default_specification=DRAFT4)


class Schemas:
    """validate(doc, "statusInfo") against the 1.0 schema of that name (its YAML file, relative $refs followed).
    The schemas are OpenAPI 3.0 objects (draft-4 style exclusiveMinimum), read as JSON Schema draft 4.
    inputValueNoObject lists a string twice (type: string, and binaryInputValue: string with format byte), so a
    oneOf over it can never match a string once; the validator treats format byte as not matching, which leaves a
    string one match, as the standard means (a base64 value says so in its encoding)."""

    def __init__(self) -> None:
        self.registry: Registry = Registry(retrieve=_retrieve)  # type: ignore[call-arg]
        self.checker = FormatChecker(formats=())
        self.checker.checks("byte")(lambda _value: False)

    def validate(self, doc: Any, name: str) -> None:
        schema = {"$ref": (SCHEMAS / f"{name}.yaml").as_uri()}
        Draft4Validator(schema, registry=self.registry, format_checker=self.checker).validate(doc)


@pytest.fixture(scope="session")
def schemas() -> Schemas:
    return Schemas()


@pytest.fixture(scope="session")
def file_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on loopback serving a directory: (base URL, directory), for external href inputs."""
    directory = tmp_path_factory.mktemp("served")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", directory
    server.shutdown()
    server.server_close()
