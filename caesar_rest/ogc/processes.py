"""Process descriptions from the app registry: an app is a process, its options (less the no-effect ones) its inputs
with JSON Schema from the option types, its declared outputs (file globs) its outputs, plus `archive`, the job's
tar.gz."""
from __future__ import annotations

import fnmatch
import mimetypes
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..apps import App, Option

ARCHIVE = "archive"
ARCHIVE_TYPE = "application/gzip"
#: Media types of extensions Python's table does not know, or knows otherwise than the apps mean them.
MEDIA_TYPES = {".csv": "text/csv", ".reg": "text/plain", ".fits": "application/fits", ".fit": "application/fits",
               ".txt": "text/plain", ".log": "text/plain", ".json": "application/json", ".png": "image/png"}
_TYPES = {"string": "string", "int": "integer", "float": "number", "bool": "boolean", "enum": "string"}


def media_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return MEDIA_TYPES.get(suffix) or mimetypes.guess_type(f"x{suffix}")[0] or "application/octet-stream"


def is_text(mtype: str) -> bool:
    return mtype.startswith("text/") or mtype in ("application/json", "application/xml")


@dataclass(frozen=True)
class Output:
    id: str
    glob: str | None            # None: the archive
    media_type: str

    def matches(self, name: str) -> bool:
        """Whether a file at the top of the job directory is this output (the archive is no file)."""
        return self.glob is not None and fnmatch.fnmatchcase(name, self.glob)


def outputs(app: App) -> dict[str, Output]:
    return outputs_of(app.outputs)


def outputs_of(globs: list[str]) -> dict[str, Output]:
    """Outputs by id, from an app's output globs: a glob's name without wildcards and extension
    ('*_catalog.csv' -> 'catalog'), made unique, then `archive`."""
    found: dict[str, Output] = {}
    for n, glob in enumerate(globs, 1):
        stem = glob.rsplit(".", 1)[0] if "." in glob.lstrip("*.") else glob
        ident = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem.replace("*", "").replace("?", "")).strip("_.-") or f"output{n}"
        while ident in found or ident == ARCHIVE:
            ident = f"{ident}_{n}"
        found[ident] = Output(ident, glob, media_type(glob))
    found[ARCHIVE] = Output(ARCHIVE, None, ARCHIVE_TYPE)
    return found


def advertised(app: App) -> dict[str, Option]:
    """The options offered as inputs: all but those caesar accepted for compatibility and ignores."""
    return {name: opt for name, opt in app.options.items() if not opt.no_effect}


def time_limit(app: App, settings: Mapping[str, Any]) -> float:
    return float(app.time_limit or settings["DEFAULT_TIME_LIMIT"])


def sync_allowed(app: App, settings: Mapping[str, Any]) -> bool:
    """Synchronous execution is offered when the app's time limit fits the wait a request may make."""
    return time_limit(app, settings) <= float(settings["OGC_SYNC_WAIT"])


def input_schema(opt: Option) -> dict[str, Any]:
    if opt.type == "file":
        schema: dict[str, Any] = {"type": "string", "contentEncoding": "binary",
                                  "contentMediaType": opt.media_type or "application/octet-stream"}
    else:
        schema = {"type": _TYPES[opt.type]}
        if opt.min is not None:
            schema["minimum"] = opt.min
        if opt.max is not None:
            schema["maximum"] = opt.max
        if opt.pattern is not None:
            schema["pattern"] = opt.pattern
        if opt.default is not None:
            schema["default"] = opt.default
    if opt.allowed is not None:
        schema["enum"] = list(opt.allowed)
    return schema


def summary(app: App, settings: Mapping[str, Any], base: str) -> dict[str, Any]:
    control = ["async-execute", "dismiss"]
    if sync_allowed(app, settings):
        control.insert(0, "sync-execute")
    href = f"{base}/processes/{app.name}"
    return {"id": app.name, "title": app.name, "description": app.description.strip(), "version": app.version,
            "keywords": ["caesar-rest", *app.backends], "jobControlOptions": control,
            "outputTransmission": ["value", "reference"],
            "links": [{"href": href, "rel": "self", "type": "application/json", "title": "process description"},
                      {"href": f"{href}?f=html", "rel": "alternate", "type": "text/html",
                       "title": "process description as HTML"},
                      {"href": f"{href}/execution", "rel": "http://www.opengis.net/def/rel/ogc/1.0/execute",
                       "type": "application/json", "title": "execute"},
                      {"href": f"{base}/jobs?processID={app.name}", "rel": "http://www.opengis.net/def/rel/ogc/1.0/job-list",
                       "type": "application/json", "title": "jobs of this process"}]}


def description(app: App, settings: Mapping[str, Any], base: str) -> dict[str, Any]:
    inputs = {}
    for name, opt in advertised(app).items():
        entry: dict[str, Any] = {"title": name, "description": opt.help or name, "minOccurs": 1 if opt.required else 0,
                                 "maxOccurs": 1, "schema": input_schema(opt)}
        if opt.category:
            entry["keywords"] = [opt.category]
        inputs[name] = entry
    outs = {}
    for ident, out in outputs(app).items():
        if out.glob is None:
            text = "The whole job directory as a tar.gz (outputs, logs, caesar_job.json)."
        else:
            text = f"The job's file matching {out.glob!r}."
        outs[ident] = {"title": ident, "description": text,
                       "schema": {"type": "string", "contentEncoding": "binary", "contentMediaType": out.media_type}}
    return {**summary(app, settings, base), "inputs": inputs, "outputs": outs}
