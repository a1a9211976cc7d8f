"""caesar apps, describe."""
from __future__ import annotations

from typing import Any, cast

import click

from ..models import AppOption
from .ui import State, complete_app, emit_json, json_option, out, pass_state, table


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
    allowed = option.get("allowed")
    if allowed:
        return " | ".join(str(v) for v in allowed)
    low, high = option.get("min"), option.get("max")
    if low is not None or high is not None:
        return f"{'' if low is None else low} .. {'' if high is None else high}"
    pattern = option.get("pattern")
    return f"~ {pattern}" if pattern else ""


def _help(option: dict[str, Any]) -> str:
    text = str(option.get("help") or "")
    if option.get("advanced"):
        text = f"(advanced) {text}"
    if option.get("effect") == "none":
        text += f" (no effect: {option.get('note', '')})"
    return text


def _default(option: AppOption) -> str:
    if option.get("required"):
        return "(required)"
    value: Any = option.get("default")
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


@click.command()
@click.argument("app", shell_complete=complete_app)
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
        extra = cast(dict[str, Any], option)       # the later upstream's keys, when the service gives them
        where = option.get("category") or "general"
        if extra.get("subcategory"):
            where += f" / {extra['subcategory']}"
        groups.setdefault(where, []).append(option)
    for category, options in groups.items():
        table(["option", "type", "default", "range", "help"],
              [[o["name"], o.get("type"), _default(o), _range(o), _help(cast(dict[str, Any], o))] for o in options],
              title=category)


@click.command()
@click.option("--apps", "per_app", is_flag=True, help="Per app (GET /appstats) instead of per user.")
@json_option
@pass_state
def usage(state: State, per_app: bool) -> None:
    """What you store and have run: files and bytes, jobs by state, job-seconds (an admin sees every user)."""
    answer = state.client.appstats() if per_app else state.client.accounting()
    if state.json:
        emit_json(answer)
        return
    if per_app:
        table(["app", "jobs", "job-seconds", "users", "by state"],
              [[name, u.get("count"), u.get("job_seconds"), u.get("users"), _states(u.get("by_state"))]
               for name, u in answer.get("apps", {}).items()])
        return
    table(["user", "files", "bytes", "jobs", "job-seconds", "by state"],
          [[name, u["files"]["count"], u["files"]["bytes"], u["jobs"]["count"], u["jobs"]["job_seconds"],
            _states(u["jobs"].get("by_state"))] for name, u in answer.get("users", {}).items()])


def _states(by_state: dict[str, int] | None) -> str:
    return ", ".join(f"{state} {n}" for state, n in (by_state or {}).items() if n)


COMMANDS = [apps, describe, usage]
