"""caesar apps, describe."""
from __future__ import annotations

from typing import Any

import click

from ..models import AppOption
from .ui import State, emit_json, json_option, out, pass_state, table


@click.command()
@json_option
@pass_state
def apps(state: State) -> None:
    """The registered apps."""
    found = state.client.apps()
    if state.json:
        emit_json(found)
        return
    table(["app", "version", "backends", "description"],
          [[a.get("name"), a.get("version"), ", ".join(a.get("backends", [])), a.get("description")] for a in found])


def _range(option: AppOption) -> str:
    if "allowed" in option:
        return " | ".join(str(v) for v in option["allowed"])
    low, high = option.get("min"), option.get("max")
    if low is not None or high is not None:
        return f"{'' if low is None else low} .. {'' if high is None else high}"
    return f"~ {option['pattern']}" if "pattern" in option else ""


def _default(option: AppOption) -> str:
    if option.get("required"):
        return "(required)"
    value: Any = option.get("default")
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


@click.command()
@click.argument("app")
@json_option
@pass_state
def describe(state: State, app: str) -> None:
    """An app's options, grouped by category: type, default, range or allowed values, help."""
    description = state.client.describe(app)
    if state.json:
        emit_json(description)
        return
    out.print(f"[bold]{description['name']}[/bold] {description.get('version', '')}: "
              f"{description.get('description', '')}")
    out.print(f"backends: {', '.join(description.get('backends', []))} "
              f"(default {description.get('default_backend', '')})", markup=False)
    groups: dict[str, list[AppOption]] = {}
    for option in description.get("options", []):
        groups.setdefault(option.get("category") or "general", []).append(option)
    for category, options in groups.items():
        table(["option", "type", "default", "range", "help"],
              [[o["name"], o.get("type"), _default(o), _range(o),
                o.get("help", "") + (f" (no effect: {o['note']})" if o.get("effect") == "none" else "")]
               for o in options], title=category)


COMMANDS = [apps, describe]
