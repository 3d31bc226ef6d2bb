"""Figures and their presentation: medians, percentiles, ratios, tables, the machine."""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    # ceil(q/100 * n); round(x + 0.5) rounded half to even, one rank too high for some whole x
    # (p99 of 100 values was the 100th). The epsilon keeps 0.9 * 1000 at 900, not 901.
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values) - 1e-9)))
    return sorted_values[rank - 1]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain fixed-width table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        out = [str(c).ljust(w) if i == 0 else str(c).rjust(w)
               for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(out).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for row in f:
                if row.startswith("model name"):
                    return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_header() -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "\n".join([
        f"date:    {now}",
        f"nproc:   {os.cpu_count()}",
        f"cpu:     {cpu_model()}",
        f"python:  {platform.python_implementation()} {platform.python_version()}",
        f"kernel:  {platform.release()}",
    ])


def banner(title: str) -> str:
    return f"\n=== {title} " + "=" * max(3, 72 - len(title))
