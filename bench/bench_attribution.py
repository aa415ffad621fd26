"""What the Attention and Attribution views cost (issue #28), each against a baseline measured in the same run,
alternating, on the bundled model in-process, its engine built as the app builds it (ModelHost: the default ONNX chat
engine, the app's fair share); the views run on the float32 torch model through the engine's worker:

1. `attention` over a 64-token text, every layer's maps ÷ one plain forward pass of the same 64 tokens
   (core/inside/forward.py `last_logits`, the views' own pass), both through `engine.inspect`. Target ≤ 1.5. Where
   that pass runs on the lean step, the transformers forward (the pass both views are built on: eager attention
   needs it, and so do gradients) is measured too, and each view ÷ it reported beside.
2. `attribution` by gradient × input on the same text ÷ that forward. Target ≤ 4. The first call is reported apart
   from the median of later ones, and the dense copies of the oneDNN-packed weights (which the first attribution
   makes for its backward passes and the model keeps for every later one) are timed alone.
3. Integrated gradients with 16 steps: seconds, ÷ that forward, and the completeness error (|Σ IG − Δ log p|); 32 and
   64 steps once each, for the error's fall with the steps.
4. A greedy 128-token chat's longest pause while 4 attribution views (both methods, 16 steps, the 64-token text)
   run at once, submitted from 4 threads right after the chat's first token, ÷ the chat's normal step (the median
   gap between two tokens of the same chat alone, alone and beside alternating in each round). Target ≤ 2. Each
   token's time is taken as the worker pushes it into its stream (a wrapper on that stream's `push`), so the
   consumer's wake-ups do not blur the gaps; the stream is consumed as a request would. Also the chat's tokens/s
   beside the views ÷ alone, the views' total time, and their mean step (the fair share's own count).

Peak RSS growth (VmHWM after ÷ VmRSS before, the peak reset through /proc/self/clear_refs) is recorded around the
first gradient × input call, the first 16-step integrated-gradients call and the 4 views beside the chat, with what
stays after each (freed heap trimmed). Wall time and process CPU time are both recorded for 1-3: on a machine shared
with other work the CPU time measures the work itself, the wall time what a user waits.

    python -m bench.bench_attribution [--rounds 5] [--chat-rounds 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from bench.bench_inside import text_of
from bench.results_io import write_results
from core.config import AppConfig, default_cache_dir
from core.engine.lean_step import shared_step
from core.engine.local import ChatEngine
from core.engine.settings import GenerationSettings
from core.engine.stream import ChatStream
from core.host import ModelHost
from core.inside.attention import attention
from core.inside.attribution import attribution
from core.inside.forward import last_logits
from core.inside.next_tokens import text_ids
from core.model.loading import load_model
from core.model.packed_linear import PackedLinear
from tests.streams import collect

TOKENS = 64
QUESTION = "Write a long story about a dragon who learns to read."
VIEWS = 4  # attribution views beside the chat
FORWARD = "forward (last_logits)"
TRANSFORMERS = "transformers forward"
ATTENTION = "attention, all layers"
GRAD = "gradient × input"
IG = "integrated gradients, 16 steps"
STATUS = Path("/proc/self/status")


# -- memory -------------------------------------------------------------------------------------------------------
def _status_mb(field: str) -> float:
    return next(int(line.split()[1]) for line in STATUS.read_text().splitlines() if line.startswith(field)) / 1024


def _trimmed_rss_mb() -> float:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    return _status_mb("VmRSS:")


@contextlib.contextmanager
def peak_growth(into: dict) -> Iterator[None]:
    """Fills `into` with the block's peak RSS over the RSS before it (MB), and what stays after it; nothing where
    /proc cannot reset the peak (not Linux)."""
    try:
        before = _trimmed_rss_mb()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    except (OSError, StopIteration):
        yield
        return
    yield
    into["peak_growth_mb"] = _status_mb("VmHWM:") - before
    into["kept_mb"] = _trimmed_rss_mb() - before


# -- 1-3: the views' latency --------------------------------------------------------------------------------------
def _last_logits(loaded, ids: list[int]):
    return (yield from last_logits(loaded.model, ids))


def _transformers_forward(loaded, ids: list[int]) -> None:
    with torch.inference_mode():
        loaded.model(input_ids=torch.tensor([ids], device=loaded.model.device), logits_to_keep=1)


def _dense_copies(loaded) -> int:
    """What each attribution does once for its backward passes: a dense copy of every packed layer's weight."""
    return sum(m.weight.numel() * m.weight.element_size() for m in loaded.model.modules()
               if isinstance(m, PackedLinear))


def _timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start_wall, time.process_time() - start_cpu, out


def alternating(cases: dict[str, Callable[[], object]], rounds: int,
                first: dict[str, dict]) -> dict[str, dict]:
    """Median wall and CPU seconds of each case over `rounds` rounds, the cases alternating within each, after
    their first calls (`first`: their times)."""
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    outs: dict[str, object] = {}
    for _ in range(rounds):
        for name, fn in cases.items():
            w, c, outs[name] = _timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
    return {name: {"wall_s": statistics.median(wall[name]), "cpu_s": statistics.median(cpu[name]),
                   "wall_rounds": wall[name], "cpu_rounds": cpu[name], "first": first[name], "last": outs[name]}
            for name in cases}


def latency(engine: ChatEngine, text: str, ids: list[int], rounds: int) -> dict:
    loaded = engine.loaded
    cases: dict[str, Callable[[], object]] = {FORWARD: lambda: engine.inspect(_last_logits, ids)}
    if shared_step(loaded.model) is not None:
        cases[TRANSFORMERS] = lambda: engine.inspect(_transformers_forward, ids)
    cases |= {
        ATTENTION: lambda: attention(engine, text, max_tokens=TOKENS),
        GRAD: lambda: attribution(engine, text, method="grad_x_input"),
        IG: lambda: attribution(engine, text, method="integrated_gradients", steps=16),
    }
    # each case's first call, in this order (the forwards warm the torch model), the attributions' with their memory
    # (a later call allocates no more than the first)
    first: dict[str, dict] = {}
    memory: dict[str, dict] = {GRAD: {}, IG: {}}
    for name, fn in cases.items():
        with peak_growth(memory[name]) if name in memory else contextlib.nullcontext():
            wall, cpu, _ = _timed(fn)
        first[name] = {"wall_s": wall, "cpu_s": cpu}
    result = alternating(cases, rounds, first)
    for name in (GRAD, IG):
        result[name]["memory"] = memory[name]
    ig = result[IG]["last"]
    result[IG] |= {"completeness_error": ig["completeness_error"],
                   "logprob_change": ig["logprob_input"] - ig["logprob_baseline"]}
    for row in result.values():
        row.pop("last")
    base, transformers = result[FORWARD], result.get(TRANSFORMERS)
    for row in result.values():
        row["ratio_wall"], row["ratio_cpu"] = row["wall_s"] / base["wall_s"], row["cpu_s"] / base["cpu_s"]
        if transformers is not None:
            row["ratio_transformers_wall"] = row["wall_s"] / transformers["wall_s"]
            row["ratio_transformers_cpu"] = row["cpu_s"] / transformers["cpu_s"]
    dense = [_timed(lambda: engine.inspect(_dense_copies)) for _ in range(max(rounds, 3))]
    result["dense copies"] = {"wall_s": statistics.median(d[0] for d in dense),
                              "cpu_s": statistics.median(d[1] for d in dense), "bytes": dense[0][2]}
    return result


def more_steps(engine: ChatEngine, text: str, forward_s: float) -> dict[int, dict]:
    """Integrated gradients at 32 and 64 steps, once each: seconds, ÷ the forward, and the completeness error."""
    out = {}
    for steps in (32, 64):
        wall, cpu, r = _timed(lambda s=steps: attribution(engine, text, method="integrated_gradients", steps=s))
        out[steps] = {"wall_s": wall, "cpu_s": cpu, "ratio_wall": wall / forward_s,
                      "completeness_error": r["completeness_error"],
                      "logprob_change": r["logprob_input"] - r["logprob_baseline"]}
    return out


# -- 4: a chat's pauses beside the views --------------------------------------------------------------------------
def timed_chat(engine: ChatEngine, tokens: int) -> tuple[ChatStream, list[float], threading.Event]:
    """A greedy chat, the time of each of its tokens as the worker pushes it, and an event set at its first."""
    stream = engine.chat(QUESTION, [], "", GenerationSettings(temperature=0, max_new_tokens=tokens))
    times: list[float] = []
    first = threading.Event()
    push = stream.push

    def recorded(token_ids: list[int]) -> None:
        times.append(time.perf_counter())
        push(token_ids)
        first.set()

    stream.push = recorded  # the worker looks it up at each token; the prompt is still being read by now
    return stream, times, first


def _gaps(times: list[float], stream: ChatStream) -> list[tuple[float, float]]:
    if len(times) != len(stream.token_ids):
        raise RuntimeError(f"{len(stream.token_ids) - len(times)} token(s) came before their times were recorded")
    return list(itertools.pairwise(times))


def alone(engine: ChatEngine, tokens: int) -> dict:
    stream, times, _ = timed_chat(engine, tokens)
    collect(stream)
    gaps = [b - a for a, b in _gaps(times, stream)]
    return {"tokens": len(times), "tokens_per_s": stream.stats.tokens_per_s, "median_gap_s": statistics.median(gaps),
            "longest_gap_s": max(gaps)}


def beside(engine: ChatEngine, text: str, tokens: int) -> dict:
    """The chat with VIEWS attribution views started on their own threads at its first token."""
    share = engine.share
    seconds: list[float] = []
    memory: dict = {}

    def view() -> None:
        start = time.perf_counter()
        attribution(engine, text, method="both", steps=16)
        seconds.append(time.perf_counter() - start)

    with peak_growth(memory):
        stream, times, first = timed_chat(engine, tokens)
        first.wait()
        before = share.stats()
        begin = time.perf_counter()
        threads = [threading.Thread(target=view) for _ in range(VIEWS)]
        for thread in threads:
            thread.start()
        collect(stream)
        for thread in threads:
            thread.join()
        end = time.perf_counter()
    after = share.stats()
    pairs = _gaps(times, stream)
    during = [b - a for a, b in pairs if b > begin and a < end]  # gaps while the views ran
    steps = after["heavy_steps"] - before["heavy_steps"]
    return {"tokens": len(times), "tokens_per_s": stream.stats.tokens_per_s,
            "median_gap_s": statistics.median(b - a for a, b in pairs), "longest_gap_s": max(during, default=0.0),
            "views_total_s": end - begin, "views_each_s": seconds, "chat_ended_before_views": stream.finished_at < end,
            "heavy_steps": steps, "mean_heavy_step_s": (after["heavy_step_seconds"] - before["heavy_step_seconds"])
            / max(steps, 1), "memory": memory}


def pauses(engine: ChatEngine, text: str, rounds: int, tokens: int) -> list[dict]:
    """Per round: the chat alone and beside the views, the first of the two swapped every round."""
    alone(engine, 16)  # warm: the prompt's keys/values cached, as for every later chat of either side
    runs = []
    for round_ in range(rounds):
        sides = {}
        for side in (("alone", "beside") if round_ % 2 == 0 else ("beside", "alone")):
            sides[side] = alone(engine, tokens) if side == "alone" else beside(engine, text, tokens)
        sides["pause_ratio"] = sides["beside"]["longest_gap_s"] / sides["alone"]["median_gap_s"]
        sides["rate_ratio"] = sides["beside"]["tokens_per_s"] / sides["alone"]["tokens_per_s"]
        print(f"round {round_ + 1}: longest pause ÷ normal step {sides['pause_ratio']:.1f}, tokens/s beside ÷ alone "
              f"{sides['rate_ratio']:.2f}, views {sides['beside']['views_total_s']:.1f} s", flush=True)
        runs.append(sides)
    return runs


# -- the table ----------------------------------------------------------------------------------------------------
def _ms(row: dict) -> str:
    return f"{row['wall_s'] * 1000:,.0f} / {row['cpu_s'] * 1000:,.0f}"


def _each(values: list[float], fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values)


def table_of(lat: dict, steps: dict[int, dict], runs: list[dict]) -> list[tuple[str, str]]:
    table = [(f"{name}, {TOKENS} tokens: ms, median of rounds (wall / CPU)", _ms(lat[name]))
             for name in (FORWARD, TRANSFORMERS, ATTENTION, GRAD, IG) if name in lat]
    targets = {ATTENTION: " (target ≤ 1.5)", GRAD: " (target ≤ 4)", IG: ""}
    table += [(f"{name} ÷ {FORWARD} (wall / CPU){target}",
               f"{lat[name]['ratio_wall']:.2f} / {lat[name]['ratio_cpu']:.2f}") for name, target in targets.items()]
    if TRANSFORMERS in lat:
        table += [(f"{name} ÷ {TRANSFORMERS} (wall / CPU)",
                   f"{lat[name]['ratio_transformers_wall']:.2f} / {lat[name]['ratio_transformers_cpu']:.2f}")
                  for name in targets]
    dense = lat["dense copies"]
    table += [(f"{name}: first call, ms (wall / CPU)", _ms(lat[name]["first"])) for name in (GRAD, IG)]
    table += [(f"dense copies of the packed weights ({dense['bytes'] / 2**20:,.0f} MB), made once by the first "
               "attribution: ms (wall / CPU)", _ms(dense))]
    rows = [(16, lat[IG]), *steps.items()]
    table += [(f"integrated gradients, {n} steps: completeness error / the change it should sum to (nats); s; "
               "÷ forward", f"{row['completeness_error']:.3g} / {row['logprob_change']:.3g}; {row['wall_s']:.2f}; "
               f"{row['ratio_wall']:.1f}") for n, row in rows]
    for name in (GRAD, IG):
        memory = lat[name]["memory"]
        if memory:
            table.append((f"{name}, first call: peak RSS growth / kept after, MB",
                          f"{memory['peak_growth_mb']:,.0f} / {memory['kept_mb']:,.0f}"))
    alone_gaps = [r["alone"]["median_gap_s"] * 1000 for r in runs]
    table += [
        ("chat alone: normal step (median gap between tokens), ms, each round", _each(alone_gaps, ".1f")),
        ("chat alone: its own longest pause ÷ normal step, each round (this machine's noise)",
         _each([r["alone"]["longest_gap_s"] / r["alone"]["median_gap_s"] for r in runs], ".1f")),
        (f"chat beside {VIEWS} attribution views: longest pause, ms, each round",
         _each([r["beside"]["longest_gap_s"] * 1000 for r in runs], ",.0f")),
        ("longest pause ÷ normal step, each round (target ≤ 2)", _each([r["pause_ratio"] for r in runs], ".1f")),
        ("longest pause ÷ normal step, median of rounds (target ≤ 2)",
         f"{statistics.median(r['pause_ratio'] for r in runs):.1f}"),
        (f"the {VIEWS} views' mean step (the fair share's count), ms, each round",
         _each([r["beside"]["mean_heavy_step_s"] * 1000 for r in runs], ",.0f")),
        ("chat tokens/s beside the views ÷ alone, each round", _each([r["rate_ratio"] for r in runs], ".2f")),
        ("chat tokens/s alone / beside, median of rounds",
         f"{statistics.median(r['alone']['tokens_per_s'] for r in runs):.1f} / "
         f"{statistics.median(r['beside']['tokens_per_s'] for r in runs):.1f}"),
        (f"the {VIEWS} views' total s (both methods, 16 steps), each round",
         _each([r["beside"]["views_total_s"] for r in runs], ".1f")),
    ]
    memory = [r["beside"]["memory"] for r in runs if r["beside"]["memory"]]
    if memory:
        table.append((f"{VIEWS} views beside the chat: peak RSS growth / kept after, MB, largest of rounds",
                      f"{max(m['peak_growth_mb'] for m in memory):,.0f} / {max(m['kept_mb'] for m in memory):,.0f}"))
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chat-rounds", type=int, default=None, help="rounds of the chat's pauses (default: --rounds)")
    parser.add_argument("--tokens", type=int, default=128, help="the chat's new tokens")
    args = parser.parse_args()
    chat_rounds = args.rounds if args.chat_rounds is None else args.chat_rounds
    loaded = load_model("bundled", device="cpu", cache_dir=default_cache_dir())
    host = ModelHost.from_loaded(loaded, AppConfig(model="bundled"))  # the app's engine, runner and fair share
    engine = host.require().engine
    try:
        text = text_of(loaded.tokenizer, TOKENS)
        ids = text_ids(loaded, text)
        if len(ids) != TOKENS:
            raise RuntimeError(f"the text reads as {len(ids)} tokens, not {TOKENS}")
        lat = latency(engine, text, ids, args.rounds)
        steps = more_steps(engine, text, lat[FORWARD]["wall_s"])
        runs = pauses(engine, text, chat_rounds, args.tokens)
        describe = engine.describe()
    finally:
        host.close()
    write_results("attribution", {"latency_64_tokens": lat, "integrated_gradients_steps": steps, "chat": runs,
                                  "torch_threads": torch.get_num_threads(), "rounds": args.rounds,
                                  "chat_rounds": chat_rounds, "tokens": args.tokens, "engine": describe,
                                  "share": host.work.share.share}, table_of(lat, steps, runs))


if __name__ == "__main__":
    main()
