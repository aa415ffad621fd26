"""CPU kernels: torch's default linear layers against oneDNN's on pre-packed weights (core/model/packed_linear.py),
side by side in one run (alternating, median of several).

1. Whole forward passes of the bundled SmolLM2-135M, both copies loaded here: decoding steps (1, 8 and 16 rows over
   64 cached tokens) and prefills (1 and 8 prompts of 12 new tokens, one prompt of 200).
2. Single matmuls of Phi-3-mini's layer shapes (hidden 3072, MLP 8192), with 1, 8 and 96 rows, in GFLOPS.
3. Memory: oneDNN keeps a kernel per row count it sees. A fresh process per variant runs one prompt of each length
   from 20 to 319 tokens and reports how much its memory grew (after glibc's malloc_trim).

    python -m bench.bench_kernels [--repeats 7]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache

from bench.app_process import ROOT
from bench.results_io import write_results
from core.config import default_cache_dir
from core.model.loading import load_model
from core.model.packed_linear import PackedLinear

PAST = 64
FORWARDS = [("decode step, 1 row", 1, 1), ("decode step, 8 rows", 8, 1), ("decode step, 16 rows", 16, 1),
            ("prefill, 1 prompt × 12 tokens", 1, 12), ("prefill, 8 prompts × 12 tokens", 8, 12),
            ("prefill, 1 prompt × 200 tokens", 1, 200)]
PHI3_SHAPES = [("qkv_proj", 3072, 9216), ("o_proj", 3072, 3072), ("gate_up_proj", 3072, 16384),
               ("down_proj", 8192, 3072)]


def median_ms(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


class ForwardCase:
    """One forward pass of `width` new tokens per row over PAST cached ones; `prepare` rebuilds the cache outside
    the timing, so that every timed pass sees the same PAST tokens."""

    def __init__(self, model, rows: int, width: int) -> None:
        generator = torch.Generator().manual_seed(rows * 1000 + width)
        self.model = model
        self.past_ids = torch.randint(100, 40_000, (rows, PAST), generator=generator)
        self.new_ids = torch.randint(100, 40_000, (rows, width), generator=generator)
        self.cache: DynamicCache | None = None

    def prepare(self) -> None:
        self.cache = DynamicCache()
        self.model(input_ids=self.past_ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)

    def run(self) -> object:
        return self.model(input_ids=self.new_ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)


def compare_forwards(repeats: int) -> list[tuple[str, float, float]]:
    cache_dir = default_cache_dir()
    default = load_model("bundled", device="cpu", cache_dir=cache_dir, progress=lambda m: None, pack_linears=False)
    packed = load_model("bundled", device="cpu", cache_dir=cache_dir, progress=lambda m: None)
    rows = []
    with torch.inference_mode():
        for label, batch, width in FORWARDS:
            cases = [ForwardCase(m.model, batch, width) for m in (default, packed)]
            times: list[list[float]] = [[], []]
            for _ in range(repeats):
                for i, case in enumerate(cases):  # alternate: both see the same machine noise
                    case.prepare()
                    times[i].append(median_ms(case.run, 1))
            rows.append((label, statistics.median(times[0]), statistics.median(times[1])))
    return rows


def compare_phi3_matmuls(repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    generator = torch.Generator().manual_seed(0)
    for name, inputs, outputs in PHI3_SHAPES:
        linear = nn.Linear(inputs, outputs, bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(outputs, inputs, generator=generator) * 0.02)
        packed = PackedLinear(linear.weight)
        for count in (1, 8, 96):
            x = torch.randn(count, inputs, generator=generator)
            flops = 2 * count * inputs * outputs
            with torch.inference_mode():  # the median drops the first, cold call
                t_default, t_packed = (median_ms(functools.partial(f, x), 3 * repeats) for f in (linear, packed))
            rows.append((f"Phi-3 {name} ({inputs}→{outputs}), {count} row{'s' if count > 1 else ''}",
                         flops / t_default / 1e6, flops / t_packed / 1e6))
    return rows


GROWTH_SCRIPT = """
import ctypes, gc, sys, torch
from core.model.loading import load_model
loaded = load_model("bundled", "cpu", "auto", progress=lambda m: None, pack_linears=sys.argv[1] == "1")
def rss_mb():
    gc.collect(); ctypes.CDLL(None).malloc_trim(0)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
with torch.inference_mode():
    loaded.model(torch.randint(100, 1000, (1, 5)))
    start = rss_mb()
    for width in range(20, 320):
        loaded.model(torch.randint(100, 1000, (1, width)), logits_to_keep=1)
    print(rss_mb() - start)
"""


def memory_growth_mb(packed: bool) -> float | None:
    """RSS growth over 300 distinct prompt lengths, in a fresh process; None where /proc is missing."""
    if not Path("/proc/self/status").exists():
        return None
    out = subprocess.run([sys.executable, "-c", GROWTH_SCRIPT, "1" if packed else "0"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    repeats = parser.parse_args().repeats
    forwards = compare_forwards(repeats)
    matmuls = compare_phi3_matmuls(repeats)
    growth = {"default": memory_growth_mb(False), "packed": memory_growth_mb(True)}
    table = [(f"SmolLM2-135M {label}: torch default → packed", f"{a:.1f} → {b:.1f} ms ({a / b:.2f}×)")
             for label, a, b in forwards]
    table += [(f"{label}: torch default → packed", f"{a:.0f} → {b:.0f} GFLOPS ({b / a:.2f}×)")
              for label, a, b in matmuls]
    if growth["packed"] is not None:
        table.append(("memory growth over 300 prompt lengths (20-319 tokens): torch default / packed",
                      f"{growth['default']:+.0f} MB / {growth['packed']:+.0f} MB"))
    data = {"threads": torch.get_num_threads(), "past_tokens": PAST, "memory_growth_mb": growth,
            "forwards_ms": {label: {"default": a, "packed": b} for label, a, b in forwards},
            "phi3_matmul_gflops": {label: {"default": a, "packed": b} for label, a, b in matmuls}}
    write_results("kernels", data, table)


if __name__ == "__main__":
    main()
