"""A finished job's output files as the job page shows them: each downloadable, PNG images inline, CSV catalogues
as a table of their first rows, DS9 region files listed."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import storage

#: What the job directory holds besides outputs: the inputs staged in and the runner's own files.
NOT_OUTPUTS = ("inputs",)
KINDS = {".png": "image", ".csv": "table", ".reg": "region", ".log": "log", ".json": "json"}


@dataclass
class Output:
    path: str                 # relative to the job directory, with '/'
    size: int
    kind: str                 # image, table, region, log, json, file
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    more_rows: bool = False    # the file holds rows past those shown


#: The most files a job page lists, and the most of them it shows inline (images, tables): the tarball has the rest.
MAX_LISTED = 500
MAX_SHOWN = 10


def listing(workdir: Path, table_rows: int) -> tuple[list[Output], bool]:
    """(the outputs, in path order, the first MAX_LISTED; whether there were more)."""
    if not workdir.is_dir():
        return [], False
    found: list[Output] = []
    shown = 0
    for path in sorted(workdir.rglob("*")):
        rel = path.relative_to(workdir)
        if rel.parts[0] in NOT_OUTPUTS or not path.is_file() or path.is_symlink():
            continue
        if len(found) == MAX_LISTED:
            return found, True
        out = Output(rel.as_posix(), path.stat().st_size, KINDS.get(path.suffix.lower(), "file"))
        if out.kind in ("image", "table"):
            if shown == MAX_SHOWN:
                out.kind = "file"       # listed, downloadable, not shown
            else:
                shown += 1
                if out.kind == "table":
                    _table(path, out, table_rows)
        found.append(out)
    return found, False


def _table(path: Path, out: Output, limit: int) -> None:
    """The header and the first rows only: a catalogue of millions of rows costs the page no more than a small one."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        out.header = next(reader, [])
        for row in reader:
            if len(out.rows) == limit:
                out.more_rows = True
                break
            out.rows.append(row)


def resolve(workdir: Path, rel: str) -> Path | None:
    """The output file rel names inside the job directory; None for anything else (.., links out, inputs)."""
    real = storage.within(workdir, workdir / rel)
    if real is None or not real.is_file():
        return None
    inside = real.relative_to(os.path.realpath(workdir))
    return None if not inside.parts or inside.parts[0] in NOT_OUTPUTS else real
