"""Figures, their baselines and targets: the printed table and the JSON file."""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean/min/max in milliseconds."""
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50": round(percentile(ms, 50), 3), "p95": round(percentile(ms, 95), 3),
            "p99": round(percentile(ms, 99), 3), "mean": round(sum(ms) / len(ms), 3), "min": round(min(ms), 3),
            "max": round(max(ms), 3)}


@dataclass
class Figure:
    """One measured figure. ratio = value / baseline; `met` says whether every part of the target holds."""

    key: str
    title: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_title: str = ""
    target: str = ""
    met: bool | None = None
    notes: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0) or self.value is None:
            return None
        return self.value / self.baseline

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(figures: list[Figure]) -> str:
    rows = [("figure", "value", "baseline", "ratio", "target", "met")]
    for f in figures:
        ratio = f.ratio
        rows.append((f.title, f"{_num(f.value)} {f.unit}",
                     f"{_num(f.baseline)} {f.unit}" + (f" ({f.baseline_title})" if f.baseline_title else "")
                     if f.baseline is not None else "-",
                     f"{ratio:.2f}x" if ratio is not None else "-", f.target or "-",
                     {True: "yes", False: "NO", None: "-"}[f.met]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "loadavg_at_start": [round(x, 2) for x in load]}


def write_json(figures: list[Figure], meta: dict[str, Any], path: Path | None = None) -> Path:
    if path is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    doc = {**meta, "figures": {f.key: f.to_json() for f in figures}}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path
