"""What a long prompt costs the chats already streaming: read in one pass, or a chunk per decoding step; and what the
prefix cache saves a conversation's next turn. On the default CPU engine (ONNX Runtime, int8).

A chat is streaming a story when a prompt of `--prompt-tokens` tokens arrives (a long conversation, a pasted
document). Measured for each way of reading it, alternating, on fresh engines over one loaded model:

- the story's longest pause between two tokens while the long prompt is read (one pass: the whole prefill);
- the long prompt's time to first token (chunked: its chunks share the worker with the story's steps);
- the story's tokens streamed meanwhile.

Target: the longest pause chunked ÷ in one pass well under 1 (the point of chunking), for a first token of the long
prompt that is not much later.

Second turn: a conversation's second message after a first answer of up to 128 tokens, its time to first token with
the prefix cache (the first turn's prompt reused; its answer is read anew, see core/engine/onnx_decoder.py) and
without it, alternating.

    python -m bench.bench_prefill [--prompt-tokens 4000] [--chunk 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from bench.results_io import write_results
from core.config import RequestLimits, default_cache_dir
from core.engine.local import ChatEngine
from core.engine.onnx_model import load_onnx_model
from core.engine.settings import GenerationSettings
from core.model.loading import load_model
from tests.streams import collect, finished

STORY = "Write a long story about a dragon who learns to read."
PASSAGE = ("The river bank was quiet in the early morning. A heron stood in the shallow water, watching for fish, "
           "while the mist rose slowly from the surface. ")


def long_prompt(tokenizer, tokens: int) -> str:
    ids = tokenizer(PASSAGE * (tokens // 20 + 1), add_special_tokens=False)["input_ids"][:tokens]
    return tokenizer.decode(ids) + "\nSummarise this in one sentence."


def one_round(loaded, onnx, chunk: int, text: str) -> dict[str, float]:
    """A story streaming, then the long prompt: the story's token times around the long prompt's first token."""
    engine = ChatEngine(loaded, RequestLimits(max_queue=4, max_new_tokens=2048), max_batch=2, prefix_cache_mb=0,
                        prefill_chunk=chunk, onnx=onnx)
    try:
        story = engine.chat(STORY, [], "", GenerationSettings(temperature=0, max_new_tokens=2000))
        times: list[float] = []  # when the worker pushed each of the story's tokens
        push = story.push

        def timed_push(ids: list[int]) -> None:
            times.append(time.perf_counter())
            push(ids)

        story.push = timed_push
        while len(times) < 3:  # the story is streaming
            time.sleep(0.01)
        arrived = time.perf_counter()
        summary = engine.chat(text, [], "", GenerationSettings(temperature=0, max_new_tokens=1))
        collect(summary)
        first = summary.first_token_at
        story.cancel()
        finished(story, 60)
        window = [arrived] + [t for t in times if arrived < t <= first] + [first]
        return {"longest_pause_s": max(b - a for a, b in itertools.pairwise(window)),
                "ttft_s": first - arrived, "story_tokens_meanwhile": len(window) - 2,
                "prompt_tokens": len(summary.prompt.ids)}
    finally:
        engine.close()


def second_turn(loaded, onnx, cache_mb: int, topic: str) -> float:
    """The time to first token of a conversation's second turn, on a fresh engine."""
    engine = ChatEngine(loaded, RequestLimits(max_queue=2), max_batch=1, prefix_cache_mb=cache_mb, onnx=onnx)
    try:
        settings = GenerationSettings(temperature=0, max_new_tokens=128)
        question = f"Tell me about {topic}."
        answer = collect(engine.chat(question, [], "", settings))
        history = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        follow_up = engine.chat("Tell me more.", history, "", GenerationSettings(temperature=0, max_new_tokens=1))
        collect(follow_up)
        return follow_up.stats.ttft_s
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt-tokens", type=int, default=4000)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    loaded = load_model("bundled", device="cpu", cache_dir=default_cache_dir())
    onnx, _ = load_onnx_model(loaded.weights_dir, default_cache_dir(), torch.get_num_threads())
    text = long_prompt(loaded.tokenizer, args.prompt_tokens)
    modes = {"one pass": 0, f"chunks of {args.chunk}": args.chunk}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in modes}
    for round_ in range(args.rounds):
        for name in (list(modes) if round_ % 2 == 0 else list(modes)[::-1]):  # neither always first
            runs[name].append(one_round(loaded, onnx, modes[name], text))
            print(name, runs[name][-1], flush=True)
    turns: dict[str, list[float]] = {"with the prefix cache": [], "without": []}
    for round_, topic in enumerate(["volcanoes", "honeybees", "lighthouses", "glaciers"]):
        for name in (list(turns) if round_ % 2 == 0 else list(turns)[::-1]):
            turns[name].append(second_turn(loaded, onnx, 0 if name == "without" else 256, topic))
    summary = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for name, rows in runs.items()}
    one, chunked = summary["one pass"], summary[f"chunks of {args.chunk}"]
    pause_ratio = chunked["longest_pause_s"] / one["longest_pause_s"]
    ttft_ratio = chunked["ttft_s"] / one["ttft_s"]
    table = [("long prompt", f"{int(one['prompt_tokens']):,} tokens, arriving while one chat streams"),
             *[(f"{name}: the streaming chat's longest pause / long prompt's first token / story tokens meanwhile",
                f"{s['longest_pause_s']:.2f} s / {s['ttft_s']:.2f} s / {int(s['story_tokens_meanwhile'])}")
               for name, s in summary.items()],
             ("longest pause, chunked ÷ one pass (target well under 1)", f"{pause_ratio:.3f}"),
             ("long prompt's first token, chunked ÷ one pass", f"{ttft_ratio:.2f}")]
    cached, fresh = statistics.median(turns["with the prefix cache"]), statistics.median(turns["without"])
    table += [("second turn's first token: with the prefix cache / without (median of 4)",
               f"{cached * 1000:.0f} / {fresh * 1000:.0f} ms ({cached / fresh:.2f})")]
    write_results("prefill", {"runs": runs, "summary": summary, "pause_ratio": pause_ratio, "ttft_ratio": ttft_ratio,
                              "second_turn_ttft_s": turns}, table)


if __name__ == "__main__":
    main()
