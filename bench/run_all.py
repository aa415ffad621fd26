"""`make bench`: every benchmark, one after another (each writes bench/results/NAME.{json,md})."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["bench.bench_startup", "bench.bench_kernels", "bench.bench_decoder", "bench.bench_chat",
              "bench.bench_index", "bench.bench_load", "bench.bench_prefill", "bench.bench_prompt",
              "bench.bench_tokenizers", "bench.bench_evaluation", "bench.bench_llamacpp", "bench.gpu_check",
              "bench.bench_inside", "bench.bench_fidelity", "bench.bench_fair_share", "bench.bench_attribution",
              "bench.bench_vocab_map"]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"\n=== {name}", flush=True)
        saved = sys.argv
        sys.argv = [name]
        try:
            importlib.import_module(name).main()
        except Exception as exc:  # keep going: one broken benchmark should not hide the others' numbers
            print(f"{name} failed: {exc!r}", flush=True)
            failed.append(name)
        finally:
            sys.argv = saved
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
