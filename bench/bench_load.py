"""Load test: N gradio_client users against a real app process, for a bounded time.

Two parts, in one run:
1. Batching gain: 1 user chatting alone, then 8 users chatting at once (greedy, 64 tokens each): aggregate tokens/s
   and time to first token (TTFT) p50/p95, side by side, through the REST API (gradio_client's sync iterator polls
   every millisecond per user, which on 2 cores would measure the clients, not the server). The same for an app on
   the float32 engine (`--engine torch`) afterwards, so the default engine's 8-chat aggregate is compared with it.
2. Soak: N users (default 20) for a bounded time, each looping over chat / tokenize / neighbours, each with a private
   conversation that carries a secret word; reports errors by kind, cross-session leaks (a secret of another user
   showing up in a prompt), and the server's memory over time.

    python -m bench.bench_load [--users 20] [--seconds 60] [--concurrent 8] [--dtype D] [--model M] [--device X]
                               [--engine E] [--compare-engine torch|none]

Only loopback traffic, bounded in count and time; it stops by itself.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from bench.app_process import AppProcess, start_app
from bench.clients import client_chat, new_session, rest_call, rest_chat
from bench.results_io import write_results

PROMPTS = ["Write a short story about a dragon.", "Explain how rain forms.", "Describe a busy market.",
           "Tell me about the moon.", "Write a poem about autumn.", "Explain what a computer does.",
           "Describe a walk in a forest.", "Tell me about the ocean."]
# The batching rounds never repeat a message, and no two start with the same word: the server reuses the keys and
# values of a cached prefix, so repeated openings would measure the cache, not a first answer. (The chat template's
# system prompt is shared by every chat, in real use too.)
FRESH = ["Tell me about a lighthouse.", "Explain how bread rises.", "Describe a volcano erupting.",
         "Why do trains run on rails?", "What do honeybees eat?", "Write about a snowstorm.",
         "How were old maps drawn?", "Name three desert animals.", "Is a violin hard to learn?",
         "Can fish sleep?", "Give me a tip for studying.", "Summarize the plot of Hamlet.",
         "List four kinds of clouds.", "Compose a haiku on rain.", "Who invented paper?",
         "Suggest a name for a cat."]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def chat_round(url: str, prompts: list[str], tokens: int, tokenizer) -> tuple[float, list[float]]:
    """One chat per prompt, started together through the REST API; returns (aggregate tokens/s, TTFTs)."""
    users = len(prompts)
    results: list[tuple[float, float, int]] = [(0.0, 0.0, 0)] * users
    barrier = threading.Barrier(users)

    def run(i: int) -> None:
        with httpx.Client(timeout=120) as http:
            session = new_session()
            rest_call(http, url, "engine_stats", [], session)  # connected, session open: like an open browser tab
            barrier.wait()
            results[i] = rest_chat(url, prompts[i], tokenizer, tokens, http, session)

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return sum(n for _, _, n in results) / elapsed, [first for _, first, _ in results]


def batching(url: str, fresh, concurrent: int, tokens: int, tokenizer) -> dict:
    """A warm-up, one chat alone twice, then `concurrent` chats at once, each with a message not seen before."""
    chat_round(url, [next(fresh)], 8, tokenizer)  # warm-up
    lone = [chat_round(url, [next(fresh)], tokens, tokenizer) for _ in range(2)]
    many_rate, many_ttft = chat_round(url, [next(fresh) for _ in range(concurrent)], tokens, tokenizer)
    return {"lone_tok_s": [rate for rate, _ in lone], "lone_ttft_s": [t for _, ttft in lone for t in ttft],
            "concurrent_tok_s": many_rate, "concurrent_ttft_s": many_ttft}


@dataclass
class SoakStats:
    requests: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    leaks: int = 0
    ttft: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def soak_user(url: str, user: int, deadline: float, stats: SoakStats) -> None:
    from gradio_client import Client

    rng = random.Random(user)
    secret = f"zebra{user:03d}"
    history = [{"role": "user", "content": f"My secret word is {secret}."},
               {"role": "assistant", "content": f"I will remember {secret}."}]
    client = Client(url, verbose=False)
    while time.perf_counter() < deadline:
        kind = rng.choice(["chat", "chat", "tokenize", "neighbors"])
        try:
            if kind == "chat":
                first, _, _ = client_chat(client, rng.choice(PROMPTS), history, 24)
                prompt = client.predict("What is my secret word?", history, "", api_name="/prompt")
                leaked = any(f"zebra{other:03d}" in prompt["text"] for other in range(1000) if other != user)
                with stats.lock:
                    stats.ttft.append(first)
                    stats.leaks += int(leaked or secret not in prompt["text"])
            elif kind == "tokenize":
                client.predict(f"{secret} likes tokens", "", api_name="/tokenize")
            else:
                client.predict(rng.choice(["king", "water", "happy", "city"]), 10, "cosine", api_name="/neighbors")
            with stats.lock:
                stats.requests[kind] += 1
        except Exception as exc:
            label = "busy" if "busy" in str(exc).lower() else f"{kind}: {type(exc).__name__}: {str(exc)[:80]}"
            with stats.lock:
                stats.errors[label] += 1
            time.sleep(0.5)


def soak(app: AppProcess, users: int, seconds: float) -> tuple[SoakStats, list[tuple[float, float, float]]]:
    """Returns the stats and (seconds, server RSS MB, prefix cache MB) samples, one per second: the prefix cache
    grows to its bound by design, so the memory check looks at what is outside it."""
    stats = SoakStats()
    deadline = time.perf_counter() + seconds
    threads = [threading.Thread(target=soak_user, args=(app.url, u, deadline, stats), daemon=True)
               for u in range(users)]
    memory: list[tuple[float, float, float]] = []
    start = time.perf_counter()
    for t in threads:
        t.start()
    session = new_session()
    with httpx.Client(timeout=30) as http:
        while any(t.is_alive() for t in threads):
            stats_now = rest_call(http, app.url, "engine_stats", [], session)
            cache = stats_now.get("prefix_cache", {}).get("bytes", 0) / 2**20
            memory.append((time.perf_counter() - start, rss_mb(app.proc.pid), cache))
            time.sleep(1.0)
            if time.perf_counter() > deadline + 120:
                break  # a stuck user must not keep the benchmark running
    return stats, memory


def _server_times(recent: dict) -> str:
    def ms(key: str) -> str:
        return "n/a" if recent.get(key) is None else f"{recent[key] * 1000:.0f}"

    return (f"{ms('ttft_p50_s')} / {ms('ttft_p95_s')} ms; {ms('queued_p50_s')} / {ms('queued_p95_s')} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", help="the app's --dtype")
    parser.add_argument("--model", default="bundled",
                        help="the app's --model (e.g. a folder with random weights of Phi-3's shape on a GPU)")
    parser.add_argument("--device", default="auto", help="the app's --device")
    parser.add_argument("--engine", default="auto", help="the app's --engine")
    parser.add_argument("--compare-engine", default="torch",
                        help="also measure the batching part on an app with this --engine ('none': skip)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from core.config import default_cache_dir
    from core.model.bundled import bundled_checkpoint

    bundled = args.model == "bundled"
    tokenizer = AutoTokenizer.from_pretrained(bundled_checkpoint(default_cache_dir())[0] if bundled else args.model)
    flags = ("--model", args.model, "--max-queue", str(max(32, args.users * 2)), "--dtype", args.dtype, "--device",
             args.device)
    fresh = iter(FRESH * 2 * (1 + (args.concurrent + 3) // len(FRESH)))
    app = start_app(*flags, "--engine", args.engine)
    try:
        app.wait_ready()
        part = batching(app.url, fresh, args.concurrent, args.tokens, tokenizer)
        stats, memory = soak(app, args.users, args.seconds)
        with httpx.Client(timeout=30) as http:  # the server's own view of the soak's last requests
            engine_stats = rest_call(http, app.url, "engine_stats", [], new_session())
        server, runner = engine_stats["recent"], engine_stats.get("runner", args.engine)
    finally:
        app.stop()
    other = None
    if args.compare_engine != "none":
        second = start_app(*flags, "--engine", args.compare_engine)
        try:
            second.wait_ready()
            other = batching(second.url, fresh, args.concurrent, args.tokens, tokenizer)
        finally:
            second.stop()
    lone, many_rate, many_ttft = statistics.median(part["lone_tok_s"]), part["concurrent_tok_s"], \
        part["concurrent_ttft_s"]
    lone_first = statistics.median(part["lone_ttft_s"])
    # Warm-up is the first half: the prefix cache takes ~25 s of the soak to reach its bound, and the largest
    # batches (with their transient tensors) occur for the first time within it too.
    warm = [(rss, cache) for t, rss, cache in memory if t >= args.seconds / 2]
    growth = (warm[-1][0] - warm[0][0]) if len(warm) >= 2 else float("nan")
    cache_growth = (warm[-1][1] - warm[0][1]) if len(warm) >= 2 else float("nan")
    data = {
        "runner": runner, **part, "compared_engine": args.compare_engine, "compared": other,
        "concurrent": args.concurrent,
        "speedup": many_rate / lone, "ttft_p95_over_lone": percentile(many_ttft, 0.95) / lone_first,
        "soak_users": args.users, "soak_seconds": args.seconds, "soak_requests": dict(stats.requests),
        "soak_errors": dict(stats.errors), "soak_leaks": stats.leaks,
        "soak_ttft_p50_s": percentile(stats.ttft, 0.5), "soak_ttft_p95_s": percentile(stats.ttft, 0.95),
        "soak_server_recent": server,
        "memory_mb": memory, "memory_growth_after_warmup_mb": growth,
        "prefix_cache_growth_after_warmup_mb": cache_growth, "growth_outside_prefix_cache_mb": growth - cache_growth,
    }
    errors = ", ".join(f"{k}: {v}" for k, v in stats.errors.items()) or "none"
    # results other than the default setup's go to bench/results/load-<setting>-....*
    setting = "-".join(v for v, default in ((args.dtype, "auto"), (args.device, "auto")) if v != default)
    compared = []
    if other is not None:
        other_lone = statistics.median(other["lone_tok_s"])
        compared = [
            (f"--engine {args.compare_engine}: 1 chat / {args.concurrent} chats aggregate tokens/s",
             f"{other_lone:.1f} / {other['concurrent_tok_s']:.1f} ({other['concurrent_tok_s'] / other_lone:.2f}×)"),
            (f"{args.concurrent} chats: this engine's aggregate ÷ --engine {args.compare_engine}'s (target > 1)",
             f"{many_rate / other['concurrent_tok_s']:.2f}")]
    write_results("load" if bundled and not setting else f"load-{setting or 'model'}", data, [
        ("engine (/engine_stats runner)", runner),
        ("1 chat alone: aggregate tokens/s (median of 2)", f"{lone:.1f}"),
        (f"{args.concurrent} chats at once: aggregate tokens/s", f"{many_rate:.1f}"),
        ("speed-up (target ≥ 2× on int8, 4× on float32)", f"{many_rate / lone:.2f}×"),
        *compared,
        ("TTFT alone (median)", f"{lone_first * 1000:.0f} ms"),
        (f"TTFT with {args.concurrent} at once: p50 / p95", f"{percentile(many_ttft, 0.5) * 1000:.0f} / "
                                                            f"{percentile(many_ttft, 0.95) * 1000:.0f} ms"),
        ("p95 TTFT ÷ lone TTFT (target ≤ 2)", f"{percentile(many_ttft, 0.95) / lone_first:.2f}"),
        (f"soak: {args.users} users × {args.seconds:.0f} s, requests", ", ".join(
            f"{k} {v}" for k, v in sorted(stats.requests.items()))),
        ("soak: errors (only 'busy' allowed)", errors),
        ("soak: cross-session leaks", str(stats.leaks)),
        ("soak: chat TTFT p50 / p95", f"{percentile(stats.ttft, 0.5) * 1000:.0f} / "
                                      f"{percentile(stats.ttft, 0.95) * 1000:.0f} ms"),
        (f"soak: inside the server, last {server['requests']} chats: TTFT p50 / p95; queued p50 / p95",
         _server_times(server)),
        ("server memory: start → end of soak; growth over the second half",
         f"{memory[0][1]:.0f} → {memory[-1][1]:.0f} MB; {growth:+.0f} MB" if memory else "n/a"),
        ("of that growth: prefix cache (bounded) / everything else",
         f"{cache_growth:+.0f} MB / {growth - cache_growth:+.0f} MB" if memory else "n/a"),
    ])


if __name__ == "__main__":
    main()
