"""A GA4GH TES task document: what the settings allow (runtime, file:// roots, backend_parameters) and the
validation that turns a request body into the normalised document a TES job keeps in job.extra["tes"].
(caesar_rest/tes.py creates, lists and renders tasks from it; workers/tes.py runs them.)"""
from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from . import images
from .apps import MAX_RETRIES
from .backends import backend_class
from .egress import Rules, literal_refusal, redact
from .errors import BackendError, BadRequest, ServiceUnavailable
from .numbers import json_int, json_number, parse_int
from .tes_access import READ, WRITE, Refused, allowed_file_path, file_root_rules, file_url_path, s3_access

FILE, DIRECTORY = "FILE", "DIRECTORY"
INPUT_SCHEMES = ("file", "http", "https", "ftp", "s3")
OUTPUT_SCHEMES = ("file", "ftp", "s3")
WILDCARD_RE = re.compile(r"[*?\[]")
# Task directories must not replace what every executor needs, nor sit inside the kernel's filesystems.
RESERVED_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
                 "/sbin", "/sys", "/usr")
KERNEL_DIRS = ("/dev", "/proc", "/sys")
# backend_parameters this service understands itself (the backend's own job_options come on top); "backend" names
# the backend the task runs on (caesar_rest.tes.task_backend).
PARAMETERS = ("time_limit", "retries", "backend")
READ_ONLY_FIELDS = ("id", "state", "logs", "creation_time")
TASK_FIELDS = ("name", "description", "inputs", "outputs", "resources", "executors", "volumes", "tags")
INPUT_FIELDS = ("name", "description", "url", "path", "type", "content", "streamable")
OUTPUT_FIELDS = ("name", "description", "url", "path", "path_prefix", "type")
EXECUTOR_FIELDS = ("image", "command", "workdir", "stdin", "stdout", "stderr", "env", "ignore_error")
RESOURCE_FIELDS = ("cpu_cores", "preemptible", "ram_gb", "disk_gb", "zones", "backend_parameters",
                   "backend_parameters_strict")


# ---- settings-derived facts -----------------------------------------------------------------------------------
def host_runtime(settings: Mapping[str, Any]) -> bool:
    """Executors run as host processes (local backend) rather than containers."""
    value = settings.get("TES_HOST_RUNTIME")
    if value is None:           # off unless an operator enables it (it used to mean "when no container backend")
        return False
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def runtime_backend(settings: Mapping[str, Any]) -> str:
    name = "local" if host_runtime(settings) else "container"
    if name not in (settings.get("BACKENDS") or {}):
        hint = "" if name == "local" else \
            "; TES_HOST_RUNTIME: true runs executors as sandboxed host processes on the local backend instead"
        raise ServiceUnavailable(f"TES tasks run on the {name} backend here, and it is not enabled in BACKENDS "
                                 f"({sorted(settings.get('BACKENDS') or {})}){hint}")
    return name


#: A backend class's check_job_options(backend_settings, options): a message when the options are invalid.
OptionsCheck = Callable[[Mapping[str, Any], Mapping[str, Any]], "str | None"]


def _backend_options(settings: Mapping[str, Any], backend: str) -> tuple[tuple[str, ...], OptionsCheck | None]:
    """The runtime backend's job options and their check; none when its class cannot be loaded here (an extra
    missing on the API host), so that listing the supported parameters still answers."""
    try:
        cls = backend_class(backend, (settings.get("BACKENDS") or {}).get(backend))
    except BackendError:
        return (), None
    return tuple(cls.job_options), cls.check_job_options


def supported_parameters(settings: Mapping[str, Any]) -> list[str]:
    """The backend_parameters keys a task may use (case-insensitive)."""
    try:
        backend = runtime_backend(settings)
    except ServiceUnavailable:
        return list(PARAMETERS)
    return list(PARAMETERS) + [o for o in _backend_options(settings, backend)[0] if o not in PARAMETERS]


def file_roots(settings: Mapping[str, Any]) -> list[str]:
    """The TES_FILE_ROOTS directories (per-user ones hold a directory for each user)."""
    return [root.path for root in file_root_rules(settings)]


# ---- validation ---------------------------------------------------------------------------------------------------
def _fail(field: str, message: str) -> BadRequest:
    return BadRequest(f"'{field}': {message}", field=field)


def _string(value: Any, field: str, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise _fail(field, "is required")
        return None
    if not isinstance(value, str) or "\x00" in value:
        raise _fail(field, "must be a string")
    if required and not value:
        raise _fail(field, "must not be empty")
    return value


def _abs_path(value: Any, field: str) -> str:
    path = _string(value, field, required=True)
    assert path is not None
    if not path.startswith("/"):
        raise _fail(field, f"must be an absolute path, not {path!r}")
    if ".." in path.split("/"):
        raise _fail(field, f"must not contain '..' ({path!r}); task paths stay inside the task's directories")
    return path


def norm(path: str) -> str:
    """A task path without redundant separators (validated paths hold no '..')."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _object(value: Any, field: str, allowed: tuple[str, ...], warnings: list[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(field, "must be a JSON object")
    out = {}
    for key, item in value.items():
        if item is None:
            continue
        if key in allowed:
            out[key] = item
        else:
            warnings.append(f"Ignored unknown field '{field}.{key}'")
    return out


def _list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(field, "must be a JSON array")
    return value


def _str_map(value: Any, field: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _fail(field, "must be an object of string values")
    return dict(value)


def _check_url(settings: Mapping[str, Any], owner: str, url: Any, field: str, schemes: tuple[str, ...],
               kind: str, access: str) -> str:
    """url, if owner may reach it for access (READ for inputs, WRITE for outputs); a 400 naming it otherwise.
    (The worker checks again before each transfer; what only resolution can tell is its to refuse.)"""
    text = _string(url, field, required=True)
    assert text is not None
    try:
        parts = urlsplit(text)
        _ = parts.port                              # a port that is not a number is a ValueError here
    except ValueError as exc:
        raise _fail(field, f"{text!r} is not a URL: {exc}") from None
    scheme = "file" if text.startswith("/") else parts.scheme.lower()
    if scheme not in schemes:
        raise _fail(field, f"{scheme or 'this'}:// URLs are not supported here; use one of "
                           f"{', '.join(s + '://' for s in schemes)}")
    try:
        if scheme == "file":
            path = file_url_path(text)
            if path is None or not path.startswith("/"):
                raise _fail(field, f"{text!r} must name a local absolute path (file:///path)")
            allowed_file_path(settings, owner, path, access)
        elif scheme == "s3":
            if not parts.netloc:
                raise _fail(field, f"{text!r} names no bucket (s3://bucket/key)")
            if kind == FILE and not parts.path.strip("/"):
                raise _fail(field, f"{text!r} names no object key")
            s3_access(settings, owner, text, access, kind == DIRECTORY)
        elif not parts.hostname:
            raise _fail(field, f"{text!r} names no host")
        else:
            refused = literal_refusal(Rules.from_settings(settings), text)
            if refused:
                raise Refused(refused)
    except Refused as exc:
        raise _fail(field, f"{redact(text)}: {exc}") from None
    return text


def _file_type(value: Any, field: str) -> str:
    if value is None:
        return FILE
    if value not in (FILE, DIRECTORY):
        raise _fail(field, f"must be FILE or DIRECTORY, not {value!r}")
    return value


def _validate_input(settings: Mapping[str, Any], owner: str, raw: Any, field: str,
                    warnings: list[str]) -> dict[str, Any]:
    item = _object(raw, field, INPUT_FIELDS, warnings)
    for key in ("name", "description"):
        _string(item.get(key), f"{field}.{key}")
    item["path"] = _abs_path(item.get("path"), f"{field}.path")
    item["type"] = _file_type(item.get("type"), f"{field}.type")
    if "streamable" in item and not isinstance(item["streamable"], bool):
        raise _fail(f"{field}.streamable", "must be true or false")
    content = _string(item.get("content"), f"{field}.content")
    limit = int(settings.get("TES_MAX_CONTENT_BYTES") or 1024 * 1024)
    if content:
        if item["type"] == DIRECTORY:
            raise _fail(f"{field}.content", "cannot make a DIRECTORY input; use type FILE")
        if len(content.encode("utf-8", "surrogatepass")) > limit:
            raise _fail(f"{field}.content", f"is larger than {limit} bytes (TES_MAX_CONTENT_BYTES); give a url")
        item.pop("url", None)           # the spec: with content, url is ignored
    elif item.get("url") is not None:
        item["url"] = _check_url(settings, owner, item["url"], f"{field}.url", INPUT_SCHEMES, item["type"], READ)
        if item["type"] == DIRECTORY and urlsplit(item["url"]).scheme.lower() in ("http", "https"):
            raise _fail(f"{field}.url", "an http(s) URL names one file; DIRECTORY inputs need file://, ftp:// or s3://")
        item.pop("content", None)
    elif content is None:
        raise _fail(f"{field}.url", "is required unless 'content' is given")
    elif item["type"] == DIRECTORY:
        raise _fail(f"{field}.content", "cannot make a DIRECTORY input; use type FILE")
    return item


def _validate_output(settings: Mapping[str, Any], owner: str, raw: Any, field: str,
                     warnings: list[str]) -> dict[str, Any]:
    item = _object(raw, field, OUTPUT_FIELDS, warnings)
    for key in ("name", "description", "path_prefix"):      # path_prefix: read only beside a wildcard, typed always
        _string(item.get(key), f"{field}.{key}")
    path = _abs_path(item.get("path"), f"{field}.path")
    item["type"] = _file_type(item.get("type"), f"{field}.type")
    url = _string(item.get("url"), f"{field}.url", required=True)
    assert url is not None
    wildcard = WILDCARD_RE.search(path)
    if wildcard:
        literal = path[:wildcard.start()]
        default_prefix = norm(literal.rsplit("/", 1)[0] or "/")
        prefix = item.get("path_prefix")
        if prefix is None:
            # Older clients (Nextflow among them) send no prefix and repeat the pattern at the end of the url.
            prefix = default_prefix
            tail = path[len(literal.rsplit("/", 1)[0]):]
            if url.rstrip("/").endswith(tail) and WILDCARD_RE.search(tail):
                url = url.rstrip("/")[:-len(tail)] or url
        prefix = norm(_abs_path(prefix, f"{field}.path_prefix"))
        if not (norm(path).startswith(prefix.rstrip("/") + "/")) or WILDCARD_RE.search(prefix):
            raise _fail(f"{field}.path_prefix", f"{prefix!r} must be a directory above the pattern {path!r}")
        item["path_prefix"] = prefix
    item["url"] = _check_url(settings, owner, url, f"{field}.url", OUTPUT_SCHEMES,
                             DIRECTORY if WILDCARD_RE.search(path) else item["type"], WRITE)
    item["path"] = path
    return item


def _validate_executor(raw: Any, field: str, warnings: list[str]) -> dict[str, Any]:
    item = _object(raw, field, EXECUTOR_FIELDS, warnings)
    _string(item.get("image"), f"{field}.image", required=True)
    command = item.get("command")
    if not isinstance(command, list) or not command:
        raise _fail(f"{field}.command", "is required: a non-empty array of program arguments (argv)")
    if not all(isinstance(a, str) and "\x00" not in a for a in command) or not command[0]:
        raise _fail(f"{field}.command", "must hold strings only, the first one naming the program")
    for key in ("workdir", "stdin", "stdout", "stderr"):
        if key in item:
            item[key] = _abs_path(item[key], f"{field}.{key}")
    if "env" in item:
        env = _str_map(item["env"], f"{field}.env")
        bad = [k for k in env if not k or "=" in k or "\x00" in k or "\x00" in env[k]]
        if bad:
            raise _fail(f"{field}.env", f"invalid variable name {bad[0]!r}")
    if "ignore_error" in item and not isinstance(item["ignore_error"], bool):
        raise _fail(f"{field}.ignore_error", "must be true or false")
    return item


def _validate_resources(settings: Mapping[str, Any], raw: Any, warnings: list[str],
                        backend: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The resources as stored, and the backend options they carry."""
    field = "resources"
    res = _object(raw, field, RESOURCE_FIELDS, warnings)
    # Numbers through caesar_rest.numbers: never true/false, NaN, infinity or wider than 64 bits.
    if "cpu_cores" in res:
        res["cpu_cores"] = json_int(res["cpu_cores"], "'resources.cpu_cores'", 1,
                                    int(settings.get("TES_MAX_CPU_CORES") or 64), field="resources.cpu_cores")
    for key in ("ram_gb", "disk_gb"):
        if key in res:
            res[key] = json_number(res[key], f"'resources.{key}'", 0, 1024**3, field=f"resources.{key}")
    for key in ("preemptible", "backend_parameters_strict"):
        if key in res and not isinstance(res[key], bool):
            raise _fail(f"resources.{key}", "must be true or false")
    if "zones" in res and (not isinstance(res["zones"], list) or not all(isinstance(z, str) for z in res["zones"])):
        raise _fail("resources.zones", "must be an array of strings")
    options: dict[str, str] = {}
    if "backend_parameters" in res:
        params = _str_map(res["backend_parameters"], "resources.backend_parameters")
        job_options, checker = _backend_options(settings, backend)
        known = {k.lower(): k for k in PARAMETERS + tuple(job_options)}
        kept: dict[str, str] = {}
        for key, value in params.items():
            name = known.get(key.lower())
            if name is None:
                if res.get("backend_parameters_strict"):
                    raise _fail(f"resources.backend_parameters.{key}",
                                f"is not supported here (backend_parameters_strict is true); supported: "
                                f"{', '.join(sorted(known.values()))}")
                warnings.append(f"Ignored unsupported backend parameter {key!r}")
                continue
            kept[name] = value
        if "time_limit" in kept:       # a string, as every backend parameter: "²" and "1e400" are not seconds
            parse_int(kept["time_limit"], "'resources.backend_parameters.time_limit' (whole seconds)", 1, 10**9,
                      field="resources.backend_parameters.time_limit")
        if "retries" in kept:          # more attempts, for the reasons TES_RETRIES lists (default lost, node_failure)
            parse_int(kept["retries"], "'resources.backend_parameters.retries' (a whole number of retries)", 0,
                      MAX_RETRIES, field="resources.backend_parameters.retries")
        options = {k: v for k, v in kept.items() if k not in PARAMETERS}
        if checker is not None and options:
            problem = checker((settings.get("BACKENDS") or {}).get(backend) or {}, options)
            if problem:
                raise _fail("resources.backend_parameters", problem)
        res["backend_parameters"] = kept
    return res, options


def mount_points(doc: Mapping[str, Any]) -> list[str]:
    """The task's directories: volumes and the directories holding inputs, outputs, workdirs and std streams.
    Each is a separate directory on the worker, mounted at that path for every executor."""
    dirs: set[str] = {norm(v) for v in doc.get("volumes") or []}
    for item in doc.get("inputs") or []:
        dirs.add(norm(item["path"]) if item["type"] == DIRECTORY else posixpath.dirname(norm(item["path"])))
    for item in doc.get("outputs") or []:
        if item.get("path_prefix") and WILDCARD_RE.search(item["path"]):
            dirs.add(norm(item["path_prefix"]))
        else:
            dirs.add(norm(item["path"]) if item["type"] == DIRECTORY else posixpath.dirname(norm(item["path"])))
    for ex in doc.get("executors") or []:
        if ex.get("workdir"):
            dirs.add(norm(ex["workdir"]))
        for key in ("stdin", "stdout", "stderr"):
            if ex.get(key):
                dirs.add(posixpath.dirname(norm(ex[key])))
    kept: list[str] = []
    for d in sorted(dirs, key=lambda p: (p.count("/"), p)):
        if not any(d == k or d.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(d)
    return kept


def _check_mounts(doc: Mapping[str, Any]) -> None:
    for mount in mount_points(doc):
        if mount in RESERVED_DIRS or any(mount.startswith(k + "/") for k in KERNEL_DIRS):
            culprit = _field_using(doc, mount)
            raise _fail(culprit, f"puts a task directory at {mount!r}, which executors need for themselves; "
                                 "use a directory of your own such as /data or /work")


def _field_using(doc: Mapping[str, Any], mount: str) -> str:
    for group in ("inputs", "outputs"):
        for i, item in enumerate(doc.get(group) or []):
            if norm(item["path"]) == mount or posixpath.dirname(norm(item["path"])) == mount:
                return f"{group}[{i}].path"
    for i, ex in enumerate(doc.get("executors") or []):
        for key in ("workdir", "stdin", "stdout", "stderr"):
            if ex.get(key) and mount in (norm(ex[key]), posixpath.dirname(norm(ex[key]))):
                return f"executors[{i}].{key}"
    return "volumes"


def validate(settings: Mapping[str, Any], body: Any, backend: str,
             owner: str) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The normalised task document of owner's task, backend options, and warnings for system_logs; 400 naming
    the field."""
    if not isinstance(body, dict):
        raise BadRequest("The task must be a JSON object (tesTask) with at least 'executors'", field="task")
    warnings: list[str] = []
    doc: dict[str, Any] = {}
    for key, value in body.items():
        if value is None or key in READ_ONLY_FIELDS:
            continue
        if key not in TASK_FIELDS:
            warnings.append(f"Ignored unknown field {key!r}")
            continue
        doc[key] = value
    for key in ("name", "description"):
        _string(doc.get(key), key)
    executors = _list(doc.get("executors"), "executors")
    if not executors:
        raise _fail("executors", "is required: at least one executor with 'image' and 'command'")
    doc["executors"] = [_validate_executor(e, f"executors[{i}]", warnings) for i, e in enumerate(executors)]
    for i, executor in enumerate(doc["executors"] if backend != "local" else ()):    # host runtime: image unused
        problem = images.refusal(settings, executor["image"])
        if problem:
            raise _fail(f"executors[{i}].image", problem)
    if "inputs" in doc:
        doc["inputs"] = [_validate_input(settings, owner, x, f"inputs[{i}]", warnings)
                         for i, x in enumerate(_list(doc["inputs"], "inputs"))]
    if "outputs" in doc:
        doc["outputs"] = [_validate_output(settings, owner, x, f"outputs[{i}]", warnings)
                          for i, x in enumerate(_list(doc["outputs"], "outputs"))]
    if "volumes" in doc:
        doc["volumes"] = [_abs_path(v, f"volumes[{i}]") for i, v in enumerate(_list(doc["volumes"], "volumes"))]
    if "tags" in doc:
        doc["tags"] = _str_map(doc["tags"], "tags")
    options: dict[str, str] = {}
    if "resources" in doc:
        doc["resources"], options = _validate_resources(settings, doc["resources"], warnings, backend)
    _check_mounts(doc)
    return doc, options, warnings

