"""App registry: YAML files under config/apps → typed option schema → validated job inputs → argv."""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import CaesarError, InvalidOption
from .numbers import NumberError, json_int, json_number

OPTION_TYPES = ("string", "int", "float", "bool", "enum", "file")
STYLES = ("separate", "equals", "positional")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_STRING = 4096


class AppConfigError(CaesarError):
    """An app YAML file is invalid; raised at load time so a broken app never half-works."""


@dataclass
class Option:
    name: str
    type: str
    required: bool = False
    default: Any = None
    min: float | None = None
    max: float | None = None
    allowed: list[Any] | None = None
    help: str = ""
    category: str = "general"
    flag: str | None = None
    style: str = "separate"
    no_effect: str | None = None        # accepted for compatibility, not passed to the command
    pattern: str | None = None
    media_type: str | None = None       # a file option's format (OGC API - Processes advertises it)
    subcategory: str | None = None      # a finer group within category (upstream clients show both)
    advanced: bool = False              # an expert's option, which clients may fold away

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required,
                               "default": self.default, "help": self.help, "category": self.category,
                               "effect": "none" if self.no_effect else "passed to the command"}
        for key in ("min", "max", "allowed", "pattern", "media_type"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        # The keys the later upstream caesar-rest's clients read per option, always present (null when unset).
        out.update({"mandatory": self.required, "enum": self.allowed, "min": self.min, "max": self.max,
                    "subcategory": self.subcategory, "advanced": self.advanced})
        if self.no_effect:
            out["note"] = self.no_effect
        else:
            out["argv"] = self.style if self.style == "positional" else f"{self.flag} ({self.style})"
        return out


@dataclass
class App:
    name: str
    version: str
    description: str
    command: list[str]
    options: dict[str, Option]
    backends: list[str] = field(default_factory=lambda: ["local"])
    default_backend: str = "local"
    image: str | None = None
    image_pull: str = "if-missing"
    cpus: float = 1.0
    memory_mb: int | None = None
    time_limit: int | None = None
    outputs: list[str] = field(default_factory=list)
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)   # per backend name
    network: bool = False               # the operator lets the app's sandboxed job reach the network
    retries: dict[str, Any] | None = None   # {"max": N, "on": [reasons]} (RETRY_REASONS); None: never retried
    source: str = ""

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "description": self.description,
                "backends": self.backends, "default_backend": self.default_backend}

    def describe(self) -> dict[str, Any]:
        return {**self.summary(), "command": self.command, "image": self.image, "image_pull": self.image_pull,
                "resources": {"cpus": self.cpus, "memory_mb": self.memory_mb, "time_limit": self.time_limit},
                "outputs": self.outputs, "options": [o.describe() for o in self.options.values()],
                "retries": self.retries or {"max": 0, "on": []}}


@dataclass
class ResolvedFile:
    """What a file-typed option points to, as the resolver found it."""

    uuid: str
    path: str
    filename: str
    size_bytes: int
    sha256: str


@dataclass
class Rendered:
    inputs: dict[str, Any]                   # normalised job_inputs (defaults filled in)
    argv: list[str]
    files: list[tuple[str, ResolvedFile, str]]  # (option, file, relpath in the job dir)


def _option(app: str, name: str, raw: Mapping[str, Any]) -> Option:
    where = f"app {app!r} option {name!r}"
    if not NAME_RE.match(name):
        raise AppConfigError(f"{where}: invalid option name")
    known = set(Option.__dataclass_fields__) - {"name"}
    unknown = set(raw) - known
    if unknown:
        raise AppConfigError(f"{where}: unknown keys {sorted(unknown)}")
    opt = Option(name=name, **raw)
    if opt.type not in OPTION_TYPES:
        raise AppConfigError(f"{where}: type must be one of {OPTION_TYPES}")
    if opt.style not in STYLES:
        raise AppConfigError(f"{where}: style must be one of {STYLES}")
    if not isinstance(opt.advanced, bool):
        raise AppConfigError(f"{where}: advanced must be true or false")
    if opt.type == "enum" and not opt.allowed:
        raise AppConfigError(f"{where}: an enum needs 'allowed'")
    if opt.flag is None:
        opt.flag = f"--{name}"
    if opt.default is not None:
        try:
            opt.default = _coerce(app, opt, opt.default)
        except InvalidOption as exc:
            raise AppConfigError(f"{where}: bad default: {exc.message}") from None
    return opt


def load_app(path: Path) -> App:
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict) or "name" not in raw or "command" not in raw:
        raise AppConfigError(f"{path}: an app needs at least 'name' and 'command'")
    name = str(raw["name"])
    if not NAME_RE.match(name):
        raise AppConfigError(f"{path}: invalid app name {name!r}")
    command = raw["command"]
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        raise AppConfigError(f"{path}: 'command' must be a non-empty list of strings (argv, never a shell line)")
    resources = raw.get("resources") or {}
    options = {k: _option(name, k, v or {}) for k, v in (raw.get("options") or {}).items()}
    backends = list(raw.get("backends") or ["local"])
    default_backend = raw.get("default_backend", backends[0])
    if default_backend not in backends:
        raise AppConfigError(f"{path}: default_backend {default_backend!r} is not in backends {backends}")
    image_pull = raw.get("image_pull", "if-missing")
    if image_pull not in ("never", "if-missing", "always"):
        raise AppConfigError(f"{path}: image_pull must be never, if-missing or always")
    return App(name=name, version=str(raw.get("version", "0")), description=str(raw.get("description", "")),
               command=command, options=options, backends=backends, default_backend=default_backend,
               image=raw.get("image"), image_pull=image_pull, cpus=float(resources.get("cpus", 1)),
               memory_mb=resources.get("memory_mb"), time_limit=resources.get("time_limit"),
               outputs=list(raw.get("outputs") or []), backend_options=dict(raw.get("backend_options") or {}),
               network=_network(path, raw.get("network", False)), retries=_retries(path, raw.get("retries")),
               source=str(path))


#: Why an attempt may be run again: its worker died (lost), its node or remote backend lost it (node_failure),
#: the kernel killed it for memory (oom), it ran past its time limit (timed_out). A non-zero exit is never retried.
RETRY_REASONS = ("lost", "node_failure", "oom", "timed_out")
MAX_RETRIES = 10


def _retries(path: Path, value: Any) -> dict[str, Any] | None:
    """`retries: {max: N, on: [reasons]}`, checked at start; max 0 (or no key) is today's behaviour."""
    if value is None:
        return None
    if isinstance(value, dict) and True in value and "on" not in value:
        value = {("on" if k is True else k): v for k, v in value.items()}     # YAML 1.1 reads a bare `on` as true
    if not isinstance(value, dict) or set(value) - {"max", "on"}:
        raise AppConfigError(f"{path}: 'retries' must be a mapping with 'max' and 'on'")
    count, on = value.get("max", 0), value.get("on", ["lost", "node_failure"])
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_RETRIES:
        raise AppConfigError(f"{path}: retries.max must be a whole number from 0 to {MAX_RETRIES}")
    if not isinstance(on, list) or not on or any(r not in RETRY_REASONS for r in on):
        raise AppConfigError(f"{path}: retries.on must be a list of {', '.join(RETRY_REASONS)}")
    return {"max": count, "on": sorted(set(on), key=RETRY_REASONS.index)} if count else None


def _network(path: Path, value: Any) -> bool:
    if not isinstance(value, bool):
        raise AppConfigError(f"{path}: 'network' must be true or false")
    return value


class Registry:
    """All apps of a directory, loaded once; a broken file fails loudly at start."""

    def __init__(self, apps_dir: str | Path) -> None:
        self.apps: dict[str, App] = {}
        for path in sorted(Path(apps_dir).glob("*.y*ml")):
            app = load_app(path)
            if app.name in self.apps:
                raise AppConfigError(f"{path}: app {app.name!r} is also defined in {self.apps[app.name].source}")
            self.apps[app.name] = app

    def get(self, name: str) -> App | None:
        return self.apps.get(name)


def _coerce(app: str, opt: Option, value: Any) -> Any:
    def bad(why: str) -> InvalidOption:
        return InvalidOption(f"Option {opt.name!r} of app {app!r} {why}", option=opt.name)

    if opt.type == "bool":
        if not isinstance(value, bool):
            raise bad(f"must be true or false, not {value!r}")
        return value
    if opt.type in ("int", "float"):
        # caesar_rest.numbers: never true/false, NaN, infinity or an integer wider than 64 bits.
        try:
            value = json_int(value, "") if opt.type == "int" else float(json_number(value, ""))
        except NumberError as exc:
            raise bad(exc.message.strip()) from None
    elif opt.type in ("string", "enum", "file"):
        if not isinstance(value, str):
            raise bad(f"must be a string, not {type(value).__name__}")
        if "\x00" in value:
            raise bad("must not contain NUL characters")
        if len(value) > MAX_STRING:
            raise bad(f"is longer than {MAX_STRING} characters")
        if opt.type == "file" and not value:
            raise bad("must name an uploaded file (uuid or path)")
        if opt.pattern and not re.fullmatch(opt.pattern, value):
            raise bad(f"does not match the pattern {opt.pattern!r}")
    if opt.type in ("int", "float"):
        if opt.min is not None and value < opt.min:
            raise bad(f"must be >= {opt.min}, not {value}")
        if opt.max is not None and value > opt.max:
            raise bad(f"must be <= {opt.max}, not {value}")
    if opt.allowed is not None and value not in opt.allowed:
        raise bad(f"must be one of {opt.allowed}, not {value!r}")
    return value


def _format(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def render(app: App, job_inputs: Any, resolve_file: Callable[[str, str], ResolvedFile]) -> Rendered:
    """Validate job_inputs against the app's options and build the argv (a list: never a shell string)."""
    if job_inputs is None:
        job_inputs = {}
    if not isinstance(job_inputs, dict):
        raise InvalidOption(f"'job_inputs' must be a JSON object of options for app {app.name!r}", option="job_inputs")
    unknown = [k for k in job_inputs if k not in app.options]
    if unknown:
        raise InvalidOption(f"Unknown option {unknown[0]!r} for app {app.name!r}; see /app/{app.name}/describe",
                            option=unknown[0])
    # Every value's type and range first, then what is missing, and only then files: the user
    # learns about the cheapest mistakes first, whatever the options' order.
    given = {name: _coerce(app.name, app.options[name], value)
             for name, value in job_inputs.items() if value is not None}
    for name, opt in app.options.items():
        if opt.required and name not in given:
            raise InvalidOption(f"Option {name!r} of app {app.name!r} is required", option=name)
    inputs: dict[str, Any] = {}
    argv = list(app.command)
    files: list[tuple[str, ResolvedFile, str]] = []
    used_names: set[str] = set()
    for name, opt in app.options.items():
        if name in given:
            value = given[name]
        elif opt.default is not None:
            value = opt.default
        else:
            continue
        inputs[name] = value
        if opt.no_effect:
            continue
        if opt.type == "file":
            resolved = resolve_file(value, name)
            relname = resolved.filename
            stem, dot, ext = relname.partition(".")
            n = 1
            while relname in used_names:
                n += 1
                relname = f"{stem}_{n}{dot}{ext}"
            used_names.add(relname)
            relpath = f"inputs/{relname}"
            files.append((name, resolved, relpath))
            value = relpath
        flag = opt.flag or f"--{name}"             # set when the app was loaded; the fallback is for mypy
        if opt.type == "bool":
            if value:
                argv.append(flag)
        elif opt.style == "positional":
            argv.append(_format(value))
        elif opt.style == "equals":
            argv.append(f"{flag}={_format(value)}")
        else:
            argv.extend([flag, _format(value)])
    return Rendered(inputs=inputs, argv=argv, files=files)
