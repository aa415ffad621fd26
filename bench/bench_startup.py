"""Start-up: warm start-to-ready of `python app.py --model bundled` against the bare import time of
torch + transformers + gradio, measured side by side (alternating runs); plus one cold start (empty cache).

    python -m bench.bench_startup [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

from bench.app_process import ROOT, start_app
from bench.results_io import write_results


def bare_imports() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, transformers, gradio"], cwd=ROOT, check=True)
    return time.perf_counter() - start


def start_to_ready(env: dict[str, str] | None = None) -> float:
    app = start_app("--model", "bundled", env=env)
    try:
        return app.wait_ready()
    finally:
        app.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as cache:
        cold = start_to_ready({"TOKEN_LAB_CACHE": cache})
    start_to_ready()  # make sure the default cache is warm
    imports, warm = [], []
    for _ in range(runs):
        imports.append(bare_imports())
        warm.append(start_to_ready())
    imp, ready = statistics.median(imports), statistics.median(warm)
    data = {"bare_imports_s": imports, "warm_start_to_ready_s": warm, "cold_start_to_ready_s": cold,
            "ratio_warm_over_imports": ready / imp, "target_ratio": 1.5}
    write_results("startup", data, [
        ("bare `import torch, transformers, gradio` (median)", f"{imp:.2f} s"),
        ("warm start-to-ready, bundled model (median)", f"{ready:.2f} s"),
        ("warm start ÷ imports (target ≤ 1.5)", f"{ready / imp:.2f}"),
        ("cold start-to-ready (empty cache: dequantize + save)", f"{cold:.2f} s"),
    ])


if __name__ == "__main__":
    main()
