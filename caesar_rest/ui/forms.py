"""An app's YAML options as form fields (grouped by category, advanced ones folded), and a posted form back into
the job request the API takes, so the server's own validation (caesar_rest.jobs.create_job) judges it."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..apps import App, Option

#: Categories shown first and open; every other category is folded as advanced.
MAIN_CATEGORIES = ("input", "general", "detection")


@dataclass
class Field:
    """One input of the form: its HTML kind and attributes, the value to show, and the error it got."""

    option: Option
    kind: str                       # number, select, checkbox, text, file
    value: Any = None
    attrs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def name(self) -> str:
        return self.option.name


@dataclass
class Group:
    category: str
    fields: list[Field]
    advanced: bool


def _number_attrs(opt: Option) -> dict[str, Any]:
    attrs: dict[str, Any] = {"step": "1" if opt.type == "int" else "any"}
    if opt.min is not None:
        attrs["min"] = _plain(opt.min)
    if opt.max is not None:
        attrs["max"] = _plain(opt.max)
    return attrs


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _html_pattern(pattern: str) -> str | None:
    """The option's pattern as an HTML pattern attribute (which browsers compile with the v flag): only when it
    holds nothing that flag reads differently; the server checks it anyway."""
    return pattern if re.fullmatch(r"[\w\s.^$*+?{}\[\]()|\\,:-]*", pattern) else None


def field_for(opt: Option, value: Any = None) -> Field:
    shown = opt.default if value is None else value
    if opt.type in ("int", "float"):
        return Field(opt, "number", shown, _number_attrs(opt))
    if opt.type == "enum" or (opt.allowed and opt.type == "string"):
        return Field(opt, "select", shown, {"choices": [str(c) for c in opt.allowed or []]})
    if opt.type == "bool":
        return Field(opt, "checkbox", bool(shown))
    if opt.type == "file":
        return Field(opt, "file", shown)
    attrs: dict[str, Any] = {}
    if opt.pattern and _html_pattern(opt.pattern):
        attrs["pattern"] = opt.pattern
    return Field(opt, "text", shown, attrs)


def groups(app: App, values: Mapping[str, Any] | None = None, error: tuple[str, str] | None = None) -> list[Group]:
    """The form's fields by category (options without effect are left out: they change nothing)."""
    values = values or {}
    by_category: dict[str, list[Field]] = {}
    for opt in app.options.values():
        if opt.no_effect:
            continue
        f = field_for(opt, values.get(opt.name))
        if error and error[0] == opt.name:
            f.error = error[1]
        by_category.setdefault(opt.category, []).append(f)
    order = sorted(by_category, key=lambda c: (MAIN_CATEGORIES.index(c) if c in MAIN_CATEGORIES else 99, c))
    return [Group(c, by_category[c], c not in MAIN_CATEGORIES and not any(f.error for f in by_category[c]))
            for c in order]


def _number(text: str, integer: bool) -> Any:
    """A form's text as the JSON number the API would get; text that is no number stays text, so the server's
    message is the one shown ("must be a number, not 'abc'")."""
    try:
        return int(text) if integer and re.fullmatch(r"[+-]?\d+", text) else float(text) if not integer else text
    except ValueError:
        return text


def job_request(app: App, form: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the job request for caesar_rest.jobs.create_job, the values to show again if it is refused)."""
    inputs: dict[str, Any] = {}
    shown: dict[str, Any] = {}
    for opt in app.options.values():
        if opt.no_effect:
            continue
        raw = form.get(opt.name)
        if opt.type == "bool":
            inputs[opt.name] = shown[opt.name] = raw is not None
            continue
        if raw is None or raw.strip() == "":
            continue
        raw = raw.strip()
        shown[opt.name] = raw
        inputs[opt.name] = _number(raw, opt.type == "int") if opt.type in ("int", "float") else raw
    body: dict[str, Any] = {"app": app.name, "job_inputs": inputs}
    for key in ("tag", "backend"):
        if form.get(key, "").strip():
            body[key] = shown[key] = form[key].strip()
    return body, shown
