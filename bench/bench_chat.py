"""Streaming speed: tokens/s of `/chat` (through gradio's REST API and through gradio_client) ÷ tokens/s of the
default CPU engine's own bare loop on the same prompt and settings (greedy, 128 new tokens), alternating in one run;
plus time to first token. The bare loop is ONNX Runtime on the same converted model with nothing around it: the
prompt in one run, then one run per token and an argmax, no scheduler, no streaming. gradio_client's sync iterator
polls every millisecond in the measuring process, so on 2 cores it measures the client as much as the server; the
REST stream is the lighter client.

The app runs as a real server process (`python app.py --model bundled`, its default engine); the bare loop runs
here, in this process's main thread, while the server is idle.

    python -m bench.bench_chat [--runs 3] [--tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
import torch

from bench.app_process import start_app
from bench.clients import client_chat, new_session, rest_chat
from bench.onnx_loop import greedy
from bench.results_io import write_results
from core.config import default_cache_dir
from core.engine.onnx_model import OnnxModel, load_onnx_model
from core.model.loading import load_model
from core.text.prompt import PromptBuilder

PROMPT = "Write a long story about a dragon who learns to read."


def bare_loop(model: OnnxModel, ids: list[int], tokens: int, eos: int) -> tuple[float, int]:
    """(tokens/s, tokens) of greedy decoding straight on the converted model."""
    start = time.perf_counter()
    generated = sum(1 for _ in greedy(model, ids, tokens, {eos}))
    return generated / (time.perf_counter() - start), generated


def client_rate(client, tokenizer, tokens: int) -> tuple[float, float, int]:
    """(tokens/s, time to first token, tokens) of one /chat call through gradio_client."""
    first, elapsed, text = client_chat(client, PROMPT, [], tokens)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) / elapsed, first, 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    from gradio_client import Client

    loaded = load_model("bundled", device="cpu", cache_dir=default_cache_dir())
    ids = PromptBuilder(loaded.tokenizer).build(PROMPT, [], "", args.tokens, loaded.context_length).ids
    model, _ = load_onnx_model(loaded.weights_dir, default_cache_dir(), torch.get_num_threads())
    eos = loaded.tokenizer.eos_token_id
    # Without the prefix cache: the bare loop reads the prompt every time, and so must the app here, so that the
    # ratio measures the engine and streaming alone.
    app = start_app("--model", "bundled", "--prefix-cache-mb", "0")
    http, session = httpx.Client(timeout=120), new_session()
    try:
        app.wait_ready()
        client = Client(app.url, verbose=False)
        rest_chat(app.url, PROMPT, loaded.tokenizer, 8, http, session)  # warm-up
        bare_loop(model, ids, 8, eos)
        plain, rest, client_rates, ttft, counts = [], [], [], [], []
        for _ in range(args.runs):
            rate, n_plain = bare_loop(model, ids, args.tokens, eos)
            plain.append(rate)
            rate, first, n_api = rest_chat(app.url, PROMPT, loaded.tokenizer, args.tokens, http, session)
            rest.append(rate)
            ttft.append(first)
            counts.append((n_plain, n_api))
            client_rates.append(client_rate(client, loaded.tokenizer, args.tokens)[0])
    finally:
        http.close()
        app.stop()
    p, a, c = statistics.median(plain), statistics.median(rest), statistics.median(client_rates)
    data = {"bare_loop_tok_s": plain, "rest_chat_tok_s": rest, "gradio_client_chat_tok_s": client_rates,
            "rest_ttft_s": ttft, "tokens": counts, "ratio_rest": a / p, "ratio_gradio_client": c / p,
            "target_ratio": 0.93}
    write_results("chat_stream", data, [
        (f"the engine's bare loop (ONNX Runtime, int8), greedy, {args.tokens} tokens (median)", f"{p:.1f} tok/s"),
        ("/chat through the REST API (SSE), same prompt (median)", f"{a:.1f} tok/s"),
        ("ratio REST /chat ÷ bare loop (target ≥ 0.93)", f"{a / p:.2f}"),
        ("/chat through gradio_client's sync iterator (median)", f"{c:.1f} tok/s"),
        ("ratio gradio_client /chat ÷ bare loop", f"{c / p:.2f}"),
        ("/chat time to first token, REST (median)", f"{statistics.median(ttft) * 1000:.0f} ms"),
    ])


if __name__ == "__main__":
    main()
