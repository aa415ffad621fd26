"""Write a benchmark's results as JSON and a markdown table under bench/results/."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, data: dict, table: list[tuple[str, str]], folder: Path = RESULTS) -> Path:
    """`table` rows are (metric, value) pairs; both files carry the machine and the date. `folder` is another place
    for them (the GPU check writes where the device tool collects its files)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {_cores()} cores",
            "cpu": cpu_description(), "python": platform.python_version()}
    (folder / f"{name}.json").write_text(json.dumps({**meta, **data}, indent=2, default=str) + "\n")
    lines = [f"# {name}", "", f"{meta['date']} · {meta['machine']} · {meta['cpu']}", "", "| metric | value |",
             "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in table]
    path = folder / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path


def cpu_description() -> str:
    """The CPU's model name and the vector extensions that change which kernels run (figures differ 3-4x between
    CPUs, so every result says which one it came from)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return f"{model} ({', '.join(f for f in wanted if f in flags) or 'no AVX2'})"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
