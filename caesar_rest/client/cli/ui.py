"""How the `caesar` command speaks: results on stdout (tables, or JSON with --json), messages and progress bars on
stderr; bars and live views only when stdout is a terminal and --json is not given."""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import click
from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ..client import Client
from ..profile import Profile, load


@dataclass
class State:
    """What every command shares: the output mode and, made on first use, the client of the stored profile."""

    json: bool = False
    timeout: float = 60.0
    _client: Client | None = field(default=None, repr=False)
    _profile: Profile | None = field(default=None, repr=False)

    @property
    def profile(self) -> Profile:
        if self._profile is None:
            self._profile = load()
        return self._profile

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self.profile.client(self.timeout)
        return self._client

    @property
    def interactive(self) -> bool:
        """Bars and live views: never with --json, nor when stdout is not a terminal (a pipe, a file, CI)."""
        return not self.json and sys.stdout.isatty() and sys.stderr.isatty()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


pass_state = click.make_pass_decorator(State, ensure=True)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(State).json = True


def json_option(func: Any) -> Any:
    """--json on a command (the same as `caesar --json COMMAND`): machine output only."""
    return click.option("--json", "as_json", is_flag=True, expose_value=False, callback=_set_json, is_eager=True,
                        help="Machine output only: JSON on stdout, no tables, bars or live views.")(func)


def complete_app(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of an app name, from the service (nothing when it cannot be reached)."""
    try:
        with load().client(timeout=3) as client:
            return [a["name"] for a in client.apps() if a["name"].startswith(incomplete)]
    except Exception:      # completion must never print an error into the user's command line
        return []


def complete_job(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of a job id: the caller's 50 newest jobs."""
    try:
        with load().client(timeout=3) as client:
            return [j["job_id"] for j in client.iter_jobs(limit=50) if j["job_id"].startswith(incomplete)]
    except Exception:      # as above
        return []


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def note(text: str) -> None:
    """A message for the person at the terminal (stderr)."""
    err.print(text, markup=False)


def table(columns: list[str], rows: list[list[Any]], title: str | None = None, whole: int = 1) -> None:
    """A table on stdout; its first `whole` columns (ids, names) are never shortened, the others wrap."""
    cells = [["" if cell is None else str(cell) for cell in row] for row in rows]
    grid = Table(title=title, title_justify="left", header_style="bold")
    for i, name in enumerate(columns):
        widest = max([len(name), *(len(row[i]) for row in cells)])
        grid.add_column(name, no_wrap=i < whole, min_width=widest if i < whole else None, overflow="fold")
    for row in cells:
        grid.add_row(*row)
    # Into a pipe or a file, rows stay whole on one line each (for grep and awk), whatever the width.
    if not out.is_terminal:
        natural = Measurement.get(out, out.options.update(max_width=100_000), grid).maximum
        Console(highlight=False, width=max(out.width, natural)).print(grid)
    else:
        out.print(grid)


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


class Bars:
    """One progress bar per transfer (bytes, rate, ETA), or nothing at all when not interactive."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    def callback(self, label: str, total: int | None = None):
        """A client progress callback drawing the bar labelled `label` (None when there are no bars)."""
        if self.progress is None:
            return None
        progress = self.progress
        task: TaskID = progress.add_task(label, total=total)

        def update(done: int, size: int | None) -> None:
            progress.update(task, completed=done, total=size)

        return update


@contextmanager
def bars(state: State) -> Iterator[Bars]:
    if not state.interactive:
        yield Bars(None)
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=err, transient=False)
    with progress:
        yield Bars(progress)
