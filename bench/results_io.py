"""Write a benchmark's results as JSON and a markdown table under bench/results/."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, data: dict, table: list[tuple[str, str]]) -> Path:
    """`table` rows are (metric, value) pairs; both files carry the machine and the date."""
    RESULTS.mkdir(exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {_cores()} cores",
            "python": platform.python_version()}
    (RESULTS / f"{name}.json").write_text(json.dumps({**meta, **data}, indent=2) + "\n")
    lines = [f"# {name}", "", f"{meta['date']} · {meta['machine']}", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in table]
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
