"""The job request shapes of the later upstream caesar-rest and its clients (AstroView's CaesarApiClient), read
into this service's own: `job_options` for `job_inputs`, and `data_inputs` as a uuid, a list of uuids or
{"data": uuid | [uuids], "format": name}, bound to the app's file options."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .apps import App, ResolvedFile
from .errors import BadRequest, InvalidOption

UUID_HEX_RE = re.compile(r"^[0-9a-f]{32}$")
FORMAT_MAX = 32          # files.format's width
DATA_INPUTS_MAX = 1000


def job_inputs(body: dict[str, Any]) -> tuple[str, Any]:
    """(the key the options came under, the options): `job_inputs`, or upstream's `job_options`, never both."""
    if "job_inputs" in body and "job_options" in body:
        raise BadRequest("Give the app's options as 'job_inputs' or as 'job_options' (the same field under "
                         "upstream's name), not both", field="job_options")
    key = "job_options" if "job_options" in body else "job_inputs"
    value = body.get(key)
    if value is not None and not isinstance(value, dict):
        raise InvalidOption(f"'{key}' must be a JSON object of options (name: value)", option=key)
    return key, value


@dataclass
class DataInputs:
    uuids: list[str]
    format: str | None


def parse_data_inputs(value: Any) -> DataInputs | None:
    """The shapes upstream sends: "uuid", ["uuid", ...] or {"data": "uuid" | ["uuid", ...], "format": "fits"}."""
    if value is None:
        return None
    fmt = None
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"data", "format"})
        if unknown:
            raise BadRequest(f"'data_inputs' takes the keys 'data' and 'format', not {unknown[0]!r}",
                             field="data_inputs")
        if "data" not in value:
            raise BadRequest("'data_inputs' as an object needs 'data': a file uuid or a list of them",
                             field="data_inputs.data")
        fmt = value.get("format")
        if fmt is not None and (not isinstance(fmt, str) or not fmt or len(fmt) > FORMAT_MAX or "\x00" in fmt):
            raise BadRequest(f"'data_inputs.format' must be a format name of 1-{FORMAT_MAX} characters, "
                             f"like the 'format' /fileids shows", field="data_inputs.format")
        where, value = "data_inputs.data", value["data"]
    else:
        where = "data_inputs"
    uuids = [value] if isinstance(value, str) else value
    if not isinstance(uuids, list) or not uuids or len(uuids) > DATA_INPUTS_MAX \
            or not all(isinstance(i, str) for i in uuids):
        raise BadRequest(f"'{where}' must be a file uuid or a list of 1-{DATA_INPUTS_MAX} file uuids",
                         field=where)
    for i in uuids:
        if not UUID_HEX_RE.match(i):
            raise BadRequest(f"'{where}': {i[:80]!r} is not a file uuid (32 lower-case hex digits)", field=where)
    if len(set(uuids)) != len(uuids):
        raise BadRequest(f"'{where}' names a file twice", field=where)
    return DataInputs(uuids=uuids, format=fmt.lower() if fmt else None)


def bind(app: App, options: dict[str, Any] | None, data: DataInputs,
         resolve: Callable[[str, str], ResolvedFile], file_format: Callable[[str], str]
         ) -> tuple[dict[str, Any], list[ResolvedFile]]:
    """Bind data_inputs to the app's file options that the options leave unset, in the app's order; returns the
    options with them set, and the files left over (staged into inputs/ beside them). Each uuid must be a file
    of the caller's (and of `format`, when given)."""
    files = [resolve(i, "data_inputs") for i in data.uuids]
    if data.format is not None:
        for f in files:
            if file_format(f.uuid).lower() != data.format:
                raise BadRequest(f"'data_inputs': file {f.uuid} is {file_format(f.uuid)!r}, not "
                                 f"{data.format!r} as 'data_inputs.format' says", field="data_inputs.format")
    options = dict(options or {})
    free = [o.name for o in app.options.values()
            if o.type == "file" and not o.no_effect and options.get(o.name) is None]
    for name, f in zip(free, files, strict=False):     # fewer files than options, or more
        options[name] = f.uuid
    return options, files[len(free):]
