"""Chats beside heavy work: a chat's tokens/s while heavy requests run ÷ the same chats alone (target ≥ 0.5), with
the heavy requests' total time beside it, for the app's fair share and for none.

Heavy work, as issue #25 measured it on a 2-core machine:
- Inside: six requests at once, three logit lenses over the last 64 positions of a 600-token text and three next-token
  views of a 6,000-token text (the work behind /logit_lens and /next_tokens, on the chat engine's worker);
- Evaluation: three /evaluate runs at once (3CosMul analogies, both rules, the word-pair sets), each its own limit so
  that none is served from another's cached result.

Each round runs the chats alone, then with the heavy requests (started first, so that the chats arrive while they
run), for each share: the app's (`--heavy-share`, 0.3) and 1.0 (no rests: one inspection step per decoding step, and
the evaluation's batches whenever they come, as before the fair share). Two greedy chats of `--tokens` tokens run
together; a chat's rate is its tokens over its time from submission to its last token.

    python -m bench.bench_fair_share [--rounds 2] [--tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

import torch

from bench.results_io import write_results
from core.config import DEFAULTS, default_cache_dir
from core.embeddings.evaluator import Evaluator, check_request
from core.embeddings.index import VocabIndex
from core.engine.local import ChatEngine
from core.engine.onnx_model import load_onnx_model
from core.engine.settings import GenerationSettings
from core.inside.logit_lens import logit_lens
from core.inside.next_tokens import next_tokens
from core.model.loading import load_model
from core.work.fair_share import FairShare
from core.work.workload import Workload
from tests.streams import collect

PASSAGE = ("The river bank was quiet in the early morning. A heron stood in the shallow water, watching for fish, "
           "while the mist rose slowly from the surface. Further along, a small boat was tied to an old wooden post, "
           "and its owner sat nearby with a cup of tea, reading yesterday's newspaper and waiting for the sun. ")
QUESTIONS = ["Write a long story about a dragon who learns to read.", "Describe a busy market in a big city."]
EVALUATION_LIMITS = (700, 701, 702)  # questions per analogy section: three results, none cached by another


def text_of(tokenizer, tokens: int) -> str:
    ids = tokenizer(PASSAGE * (tokens // 50 + 1), add_special_tokens=False)["input_ids"][:tokens]
    return tokenizer.decode(ids)


def chat_rate(engine: ChatEngine, tokens: int) -> float:
    """Mean tokens/s of the chats, each from its submission to its last token."""
    settings = GenerationSettings(temperature=0, max_new_tokens=tokens)
    submitted = time.perf_counter()
    streams = [engine.chat(q, [], "", settings) for q in QUESTIONS]
    for stream in streams:
        collect(stream)
    return statistics.mean(len(s.token_ids) / (s.finished_at - submitted) for s in streams)


def heavy_together(jobs: list[Callable[[], object]]) -> tuple[list[threading.Thread], list[float]]:
    """Start every job on its own thread; the list gets each one's seconds as it ends."""
    seconds: list[float] = []

    def timed(job: Callable[[], object]) -> None:
        start = time.perf_counter()
        job()
        seconds.append(time.perf_counter() - start)

    threads = [threading.Thread(target=timed, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    return threads, seconds


def beside(engine: ChatEngine, jobs: list[Callable[[], object]], tokens: int, started: Callable[[], bool]) -> dict:
    """The chats' rate while `jobs` run (the chats start once `started()` says the heavy work is under way), and the
    heavy work's total time."""
    begin = time.perf_counter()
    threads, seconds = heavy_together(jobs)
    while not started():
        time.sleep(0.01)
    rate = chat_rate(engine, tokens)
    for thread in threads:
        thread.join()
    return {"chat_tokens_per_s": rate, "heavy_total_s": time.perf_counter() - begin, "heavy_each_s": seconds}


def inside_jobs(engine: ChatEngine, lens_text: str, long_text: str) -> list[Callable[[], object]]:
    lens = [lambda: logit_lens(engine, lens_text, max_tokens=64)] * 3
    return lens + [lambda: next_tokens(engine, long_text, k=10)] * 3


def evaluation_jobs(evaluator: Evaluator) -> list[Callable[[], object]]:
    return [lambda n=n: evaluator.evaluate(check_request("all", "3cosmul", n)) for n in EVALUATION_LIMITS]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    cache = default_cache_dir()
    loaded = load_model("bundled", device="cpu", cache_dir=cache)
    onnx, note = load_onnx_model(loaded.weights_dir, cache, torch.get_num_threads())
    index = VocabIndex.from_model(loaded.model, loaded.tokenizer, use_gpu=False, cache_dir=cache)
    lens_text, long_text = text_of(loaded.tokenizer, 600), text_of(loaded.tokenizer, 6_000)
    shares = (DEFAULTS.heavy_share, 1.0)
    runs: dict[str, list[dict]] = {}
    for round_ in range(args.rounds):
        for share in shares:
            work = Workload(share=FairShare(share))
            engine = ChatEngine(loaded, max_batch=4, prefix_cache_mb=0, onnx=onnx, onnx_note=note, share=work.share)
            try:
                chat_rate(engine, 16)  # warm
                alone = chat_rate(engine, args.tokens)
                with_inside = beside(engine, inside_jobs(engine, lens_text, long_text), args.tokens,
                                     lambda e=engine: e.stats()["inspections"]["running"] > 0)
                evaluator = Evaluator(index, f"bundled-{round_}-{share}", None, work)  # nothing cached
                with_evaluations = beside(engine, evaluation_jobs(evaluator), args.tokens,
                                          lambda w=work: w.evaluations.stats()["running"] > 0)
            finally:
                engine.close()
            runs.setdefault(str(share), []).append({
                "alone_tokens_per_s": alone, "inside": with_inside, "evaluations": with_evaluations,
                "inside_ratio": with_inside["chat_tokens_per_s"] / alone,
                "evaluations_ratio": with_evaluations["chat_tokens_per_s"] / alone})
            print(share, runs[str(share)][-1], flush=True)
    table = []
    for share in shares:
        rows = runs[str(share)]
        name = f"share {share}" + (" (the app's)" if share == DEFAULTS.heavy_share else " (no rests)")
        table += [
            (f"{name}: chat tokens/s alone, each round", ", ".join(f"{r['alone_tokens_per_s']:.1f}" for r in rows)),
            (f"{name}: chat with 6 Inside requests ÷ alone, each round (target ≥ 0.5)",
             ", ".join(f"{r['inside_ratio']:.2f}" for r in rows)),
            (f"{name}: the 6 Inside requests' total s, each round",
             ", ".join(f"{r['inside']['heavy_total_s']:.1f}" for r in rows)),
            (f"{name}: chat with 3 evaluations ÷ alone, each round (target ≥ 0.5)",
             ", ".join(f"{r['evaluations_ratio']:.2f}" for r in rows)),
            (f"{name}: the 3 evaluations' total s, each round",
             ", ".join(f"{r['evaluations']['heavy_total_s']:.1f}" for r in rows)),
        ]
    write_results("fair_share", {"runs": runs, "tokens": args.tokens, "rounds": args.rounds,
                                 "torch_threads": torch.get_num_threads(), "runner": note}, table)


if __name__ == "__main__":
    main()
