"""Client-side validation of a job request: the service's own code (caesar_rest.apps.render, the backend check of
caesar_rest.jobs) run on the app as `describe` gives it, so a mistake is caught before anything is sent (or
uploaded) with the message, and the option named, the service would answer."""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..apps import App, Option, ResolvedFile, render
from ..errors import CaesarError, InvalidOption as ServerInvalidOption, ValidationError
from .errors import BadRequest, InvalidOption
from .models import AppDescription

_OPTION_KEYS = ("type", "required", "default", "min", "max", "allowed", "help", "category", "pattern", "media_type")


def app_of(description: AppDescription) -> App:
    """The service's App, rebuilt from a describe answer (what render needs: the options and their rules)."""
    options: dict[str, Option] = {}
    for raw in description.get("options", []):
        known = {k: raw[k] for k in _OPTION_KEYS if k in raw}  # type: ignore[literal-required]
        option = Option(name=raw["name"], **known)
        option.no_effect = raw.get("note") or ("no effect" if raw.get("effect") == "none" else None)
        options[option.name] = option
    backends = list(description.get("backends") or ["local"])
    return App(name=description["name"], version=str(description.get("version", "")),
               description=description.get("description", ""), command=list(description.get("command") or ["-"]),
               options=options, backends=backends, default_backend=description.get("default_backend", backends[0]))


def option_value(option: Option | None, text: str) -> Any:
    """A command-line `name=value` value as the JSON value the service expects for the option's type. What does not
    read as that type is sent as the text, so the validation names the option and says what it must be."""
    if option is None or option.type in ("string", "enum", "file"):
        return text
    if option.type == "bool":
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float) and not isinstance(value, bool) else text


def _placeholder(value: str, option: str) -> ResolvedFile:
    """Files are the service's to resolve (uuids and paths of the caller's files): any name stands in here."""
    return ResolvedFile(uuid=value, path=value, filename=value.rsplit("/", 1)[-1] or "input", size_bytes=0,
                        sha256="")


def validate(description: AppDescription, job_inputs: Mapping[str, Any], backend: str | None = None) -> None:
    """Raise InvalidOption (or BadRequest for the backend) as the service would for these inputs; files are left
    for the service to find, and so is whether a backend is enabled there."""
    app = app_of(description)
    try:
        render(app, dict(job_inputs), _placeholder)
        if backend is not None:
            from ..jobs import _pick_backend

            _pick_backend({"BACKENDS": {name: {} for name in app.backends}}, app, backend)
    except ServerInvalidOption as exc:
        raise InvalidOption(400, _body(exc, "invalid_option")) from None
    except ValidationError as exc:
        raise BadRequest(400, _body(exc, "bad_request")) from None
    except CaesarError as exc:      # nothing else is raised by these; kept as the service would say it
        raise BadRequest(400, _body(exc, "bad_request")) from None


def _body(exc: CaesarError, error: str) -> dict[str, Any]:
    return {"code": 400, "error": error, "status": exc.message, "message": exc.message, "client_side": True,
            **exc.details}
