"""Registered apps and their option schemas, straight from config/apps/*.yml."""
from __future__ import annotations

from flask import jsonify
from flask_smorest import Blueprint

from ..errors import NotFound
from . import docs
from .common import registry

blp = Blueprint("apps", __name__, description="Registered applications")


@blp.route("/apps", methods=["GET"])
@blp.doc(summary="List the registered apps", responses=docs.responses(200, "Apps", "The registered apps"))
def list_apps():
    return jsonify({"apps": [app.summary() for app in registry().apps.values()]})


@blp.route("/app/<name>/describe", methods=["GET"])
@blp.doc(summary="An app's options: type, default, range, help, and whether they have an effect",
         responses=docs.responses(200, "AppDescription", "The app and its options", (404,)))
def describe(name: str):
    app = registry().get(name)
    if app is None:
        raise NotFound(f"Unknown app {name!r}; GET /apps lists the registered apps")
    return jsonify(app.describe())
