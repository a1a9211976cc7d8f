"""caesar-rest: a REST job service that runs registered scientific applications on whatever compute there is."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider
from flask_smorest import Api

__version__ = "1.0.0"
API_PREFIX = "/caesar/api/v1.0"

from . import logs  # noqa: E402

logs.install_worker_hooks()   # the Celery workers import this package: each job's log lines carry the job id


def create_app(config: Mapping[str, Any] | None = None, served_by: str | None = None) -> Flask:
    """The Flask app: settings in the fixed order (defaults, file, env, `config`), then blueprints.
    served_by: how others reach it ("served by uWSGI", "bound to 0.0.0.0"), when they can: there AUTH_MODE none
    is refused unless ALLOW_ANONYMOUS says so (auth.check_exposure)."""
    from . import auth, db, errors, guard, tes_access
    from .api import (
        accounting as accounting_api,
        apps as apps_api,
        files as files_api,
        jobs as jobs_api,
        ogc as ogc_api,
        ops as ops_api,
        tes as tes_api,
        tus as tus_api,
    )
    from .apps import Registry
    from .celery_app import make_celery
    from .config import load_settings

    settings = load_settings(config)
    db.configure(settings)
    auth.check_settings(settings)
    auth.check_exposure(settings, served_by)
    tes_access.check_settings(settings)       # TES file roots, S3 access and egress settings: fail at start
    app = Flask(__name__)
    app.config.update(settings)
    app.config.update(
        API_TITLE="caesar-rest", API_VERSION=__version__, OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/", OPENAPI_JSON_PATH="openapi.json",
        # Swagger UI from the package's own copy (caesar_rest/static/swagger): no CDN, no validator badge.
        OPENAPI_SWAGGER_UI_PATH="swagger", OPENAPI_SWAGGER_UI_URL="/static/swagger/",
        OPENAPI_SWAGGER_UI_CONFIG={"validatorUrl": None},
        # Multipart framing adds a little to the file itself.
        MAX_CONTENT_LENGTH=int(settings["MAX_UPLOAD_BYTES"]) + 1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    if isinstance(app.json, DefaultJSONProvider):
        app.json.sort_keys = False
    logs.init_app(app)
    for sub in ("DATA_DIR", "JOBS_DIR"):
        Path(settings[sub]).mkdir(parents=True, exist_ok=True)
    _close_to_others(Path(settings["DATA_DIR"]))
    from .storage import remove_stale_uploads
    remove_stale_uploads(settings["DATA_DIR"], float(settings["STALE_UPLOAD_AFTER"]))
    if settings.get("AUTO_MIGRATE", True):
        db.upgrade(settings["DATABASE_URL"])
    app.extensions["caesar_registry"] = Registry(settings["APPS_DIR"])
    app.extensions["celery"] = make_celery(settings)

    api = Api(app)
    from .api import docs
    docs.register(api)
    for name, schema in accounting_api.SCHEMAS.items():
        api.spec.components.schema(name, schema)
    for module in (files_api, tus_api, apps_api, jobs_api, accounting_api):
        api.register_blueprint(module.blp, url_prefix=API_PREFIX)
    api.register_blueprint(ops_api.blp)
    ops_api.init_app(app)
    tes_api.register(api, app)
    ogc_api.register(api, app)
    from . import ui
    ui.register(app)                        # the web dashboard at /ui/
    guard.init_app(app)                     # Host, cross-site and CORS checks come before authentication
    app.before_request(auth.authenticate)
    app.teardown_request(files_api.discard_uploads)
    errors.register(app)
    return app


def _close_to_others(path: Path) -> None:
    """DATA_DIR is the service's group's only (0750 at most): a job's sandbox user, or any other account on the
    host, must not walk into the uploads, some of which carry an ACL entry for the sandbox group once staged."""
    try:
        mode = path.stat().st_mode & 0o7777
        if mode & 0o007:
            path.chmod(mode & ~0o007)
    except PermissionError:     # not ours to change: the operator set it up
        pass
