"""The model runner's decoding speed: the lean step on a static cache (what the CPU engine runs for Llama-family
float32 models) ÷ BatchDecoder's transformers forward (what it runs for the others), on the bundled model.

One row and `--rows` rows decode `--tokens` greedy tokens after one prefill, each decoder in turn, alternating
which goes first; the token ids must be the same (the lean step computes the same bits). Target: above 1.

    python -m bench.bench_decoder [--tokens 128] [--rows 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.results_io import write_results
from core.config import default_cache_dir
from core.engine.batch_decoder import BatchDecoder, Slot
from core.engine.lean_decoder import LeanBatchDecoder
from core.engine.settings import GenerationSettings
from core.model.loading import load_model

QUESTION = "Write a long story about a dragon who learns to read."
DECODERS = {"transformers forward (BatchDecoder)": BatchDecoder, "lean step (LeanBatchDecoder)": LeanBatchDecoder}


def decode(loaded, decoder_class: type[BatchDecoder], ids: list[int], rows: int, tokens: int) -> tuple[float, list]:
    """Tokens/s of the decoding steps after one prefill of `rows` copies of `ids` (no stop token: full length), and
    the first row's tokens."""
    decoder = decoder_class(loaded.model, stop_ids=[])
    slots = [Slot(prompt_ids=list(ids), params=GenerationSettings(temperature=0), max_new_tokens=tokens,
                  emit=lambda token: None) for _ in range(rows)]
    with torch.inference_mode():
        decoder.admit(slots)
        start = time.perf_counter()
        while decoder.slots:
            decoder.step()
        seconds = time.perf_counter() - start
    return rows * (tokens - 1) / seconds, slots[0].generated


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    loaded = load_model("bundled", device="cpu", cache_dir=default_cache_dir())
    ids = loaded.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"]
    rates: dict[tuple[str, int], list[float]] = {}
    answers: dict[tuple[str, int], list[int]] = {}
    for round_ in range(args.rounds):
        order = list(DECODERS) if round_ % 2 == 0 else list(DECODERS)[::-1]  # neither always first
        for rows in (1, args.rows):
            for name in order:
                rate, answer = decode(loaded, DECODERS[name], ids, rows, args.tokens)
                rates.setdefault((name, rows), []).append(rate)
                answers[(name, rows)] = answer
                print(name, rows, f"{rate:.1f} tok/s", flush=True)
    plain, lean = DECODERS
    median = {key: statistics.median(values) for key, values in rates.items()}
    same = all(answers[(plain, rows)] == answers[(lean, rows)] for rows in (1, args.rows))
    table = [*[(f"{name}, {rows} row{'s' if rows > 1 else ''}: tokens/s (median of {args.rounds})",
                f"{median[(name, rows)]:.1f}") for rows in (1, args.rows) for name in DECODERS],
             *[(f"lean ÷ transformers forward, {rows} row{'s' if rows > 1 else ''} (target > 1)",
                f"{median[(lean, rows)] / median[(plain, rows)]:.2f}") for rows in (1, args.rows)],
             ("the same token ids", "yes" if same else "NO"),
             ("greedy, new tokens per row, threads", f"yes, {args.tokens}, {torch.get_num_threads()}")]
    write_results("decoder", {"rates": {f"{name} / {rows}": values for (name, rows), values in rates.items()},
                              "median": {f"{name} / {rows}": value for (name, rows), value in median.items()},
                              "same_ids": same}, table)


if __name__ == "__main__":
    main()
