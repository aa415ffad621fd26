"""What looking inside costs, each against its own baseline measured in the same run, alternating:

1. `next_tokens` and `logit_lens` (the work behind /next_tokens and /logit_lens, run through the chat engine's
   worker as the endpoints run them) on a 64-token text ÷ one plain forward pass of that text on the same worker
   (the model's transformers forward, logits at every position). Target ≤ 1.5. The lens is measured at the default
   positions for where the model runs, and at the GPU default for comparison: each of its cells is one full LM-head
   row. Where the views run on the lean step (core/engine/lean_step.py), the same pass on it is measured too, and
   each view ÷ that pass reported beside.
2. Chat tokens/s on the default CPU engine (ONNX Runtime) with per-token logprobs (top 5) on ÷ off, greedy, one
   chat alone and four together, the order
   back to back in each round, the first of them swapped every round; the ratio is taken within each round and
   averaged (geometric mean) over an even number of rounds. Target ≥ 0.9.

Wall time and process CPU time are both recorded: on a machine shared with other work the CPU time measures the
work itself, the wall time what a user waits.

    python -m bench.bench_inside [--rounds 7] [--chat-rounds 6] [--tokens 48]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers import DynamicCache

from bench.results_io import write_results
from core.config import default_cache_dir
from core.engine.lean_step import shared_step
from core.engine.local import ChatEngine
from core.engine.onnx_model import load_onnx_model
from core.engine.settings import GenerationSettings
from core.inside.logit_lens import CPU_POSITIONS, GPU_POSITIONS, default_positions, logit_lens
from core.inside.next_tokens import next_tokens
from core.model.loading import load_model
from tests.streams import collect

PASSAGE = ("The river bank was quiet in the early morning. A heron stood in the shallow water, watching for fish, "
           "while the mist rose slowly from the surface. Further along, a small boat was tied to an old wooden post, "
           "and its owner sat nearby with a cup of tea, reading yesterday's newspaper and waiting for the sun. ")
LEAN = "the same forward on the lean step"
QUESTIONS = ["Write a long story about a dragon who learns to read.", "Describe a busy market in a big city.",
             "Explain how a bicycle works, in detail.", "Describe the life of a lighthouse keeper."]


def text_of(tokenizer, tokens: int) -> str:
    """A text that tokenizes to exactly `tokens` tokens."""
    text = tokenizer.decode(tokenizer(PASSAGE * 4, add_special_tokens=False)["input_ids"][:tokens])
    if len(tokenizer(text, add_special_tokens=False)["input_ids"]) != tokens:
        raise RuntimeError("the cut text re-tokenizes to a different length")
    return text


def _forward(loaded, ids: list[int]) -> None:
    with torch.inference_mode():
        loaded.model(input_ids=torch.tensor([ids], device=loaded.model.device))


def _lean_forward(loaded, ids: list[int]) -> None:
    """The same pass (logits at every position) on the lean step the views run on."""
    step = shared_step(loaded.model)
    with torch.inference_mode():
        stream = step.forward(torch.tensor([ids]), torch.arange(len(ids))[None], None, DynamicCache())
        step.logits(stream[-1][0])


def measured(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds of each case, the cases alternating within every round after one warm-up."""
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()
    for _ in range(rounds):
        for name, fn in cases.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start_wall)
    return {name: {"wall_s": statistics.median(wall[name]), "cpu_s": statistics.median(cpu[name]),
                   "wall_rounds": wall[name], "cpu_rounds": cpu[name]} for name in cases}


def latency(engine: ChatEngine, rounds: int) -> dict[str, dict[str, float]]:
    loaded = engine.loaded
    text = text_of(loaded.tokenizer, 64)
    ids = loaded.tokenizer(text)["input_ids"]
    positions = default_positions(loaded.device)
    cases = {
        "plain forward": lambda: engine.inspect(_forward, ids),
        "next_tokens": lambda: next_tokens(engine, text, k=10, temperature=0.7, top_p=0.95, top_k=50),
        f"logit_lens {positions} positions (default here)": lambda: logit_lens(engine, text, max_tokens=positions),
    }
    other = GPU_POSITIONS if positions == CPU_POSITIONS else CPU_POSITIONS
    cases[f"logit_lens {other} positions"] = lambda: logit_lens(engine, text, max_tokens=other)
    if shared_step(loaded.model) is not None:
        cases[LEAN] = lambda: engine.inspect(_lean_forward, ids)
    result = measured(cases, rounds)
    base, lean = result["plain forward"], result.get(LEAN)
    for row in result.values():
        row["ratio_wall"] = row["wall_s"] / base["wall_s"]
        row["ratio_cpu"] = row["cpu_s"] / base["cpu_s"]
        if lean is not None:
            row["ratio_lean_wall"] = row["wall_s"] / lean["wall_s"]
            row["ratio_lean_cpu"] = row["cpu_s"] / lean["cpu_s"]
    return result


def chat_rates(engine: ChatEngine, rounds: int, tokens: int) -> dict[str, dict]:
    """Per number of chats together: tokens/s (wall, first token to last) and tokens per process CPU second with
    logprobs off and on, each round's on ÷ off, and their geometric mean over the rounds.

    On and off run back to back in every round, the first of the two swapped each round; the ratio is taken within
    a round, so a host that speeds up or slows down over minutes moves both sides of it, and over an even number of
    rounds each side runs first equally often."""
    runs: dict[tuple[int, bool], dict[str, list[float]]] = {}
    for round_ in range(rounds):
        for together in (1, len(QUESTIONS)):
            for top in ((None, 5) if round_ % 2 == 0 else (5, None)):
                settings = GenerationSettings(temperature=0, max_new_tokens=tokens, top_logprobs=top)
                start_cpu = time.process_time()
                streams = [engine.chat(q, [], "", settings) for q in QUESTIONS[:together]]
                for stream in streams:
                    collect(stream)
                cpu = time.process_time() - start_cpu
                first = min(s.first_token_at for s in streams)
                last = max(s.finished_at for s in streams)
                generated = sum(len(s.token_ids) for s in streams)
                run = runs.setdefault((together, top is not None), {"wall": [], "cpu": []})
                run["wall"].append((generated - together) / (last - first))
                run["cpu"].append(generated / cpu)
    out = {}
    for together in (1, len(QUESTIONS)):
        on, off = runs[(together, True)], runs[(together, False)]
        label = f"{together} chat{'s' if together > 1 else ''}"
        per_round = {kind: [a / b for a, b in zip(on[kind], off[kind], strict=True)] for kind in ("wall", "cpu")}
        out[label] = {"on_tokens_per_s": on["wall"], "off_tokens_per_s": off["wall"],
                      "on_tokens_per_cpu_s": on["cpu"], "off_tokens_per_cpu_s": off["cpu"],
                      "ratio_per_round": per_round,
                      "ratio": {kind: statistics.geometric_mean(r) for kind, r in per_round.items()}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chat-rounds", type=int, default=6, help="an even number: each side runs first as often")
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    loaded = load_model("bundled", device="cpu", cache_dir=default_cache_dir())
    onnx, note = load_onnx_model(loaded.weights_dir, default_cache_dir(), torch.get_num_threads())
    engine = ChatEngine(loaded, max_batch=len(QUESTIONS), prefix_cache_mb=0, onnx=onnx, onnx_note=note)
    try:
        lat = latency(engine, args.rounds)
        chat = chat_rates(engine, args.chat_rounds, args.tokens)
    finally:
        engine.close()
    table = [(f"{name}, 64 tokens: ms (wall / CPU)", f"{row['wall_s'] * 1000:,.0f} / {row['cpu_s'] * 1000:,.0f}")
             for name, row in lat.items()]
    table += [(f"{name} ÷ plain forward (wall / CPU; target ≤ 1.5)",
               f"{row['ratio_wall']:.2f} / {row['ratio_cpu']:.2f}")
              for name, row in lat.items() if name != "plain forward"]
    table += [(f"{name} ÷ {LEAN} (wall / CPU)", f"{row['ratio_lean_wall']:.2f} / {row['ratio_lean_cpu']:.2f}")
              for name, row in lat.items() if "ratio_lean_wall" in row and name not in ("plain forward", LEAN)]
    for label, row in chat.items():
        off, on = statistics.median(row["off_tokens_per_s"]), statistics.median(row["on_tokens_per_s"])
        table += [(f"{label}, logprobs off / on: tokens/s (wall, median of rounds)", f"{off:.1f} / {on:.1f}"),
                  (f"{label}: tokens/s logprobs on ÷ off, each round",
                   ", ".join(f"{r:.2f}" for r in row["ratio_per_round"]["wall"])),
                  (f"{label}: tokens/s logprobs on ÷ off, geometric mean of rounds (wall / CPU; target ≥ 0.9)",
                   f"{row['ratio']['wall']:.3f} / {row['ratio']['cpu']:.3f}")]
    write_results("inside", {"latency_64_tokens": lat, "chat": chat,
                             "torch_threads": torch.get_num_threads(), "rounds": args.rounds,
                             "chat_rounds": args.chat_rounds, "tokens": args.tokens}, table)


if __name__ == "__main__":
    main()
