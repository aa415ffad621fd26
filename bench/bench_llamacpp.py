"""Chat speed beside llama.cpp, on the same GGUF (the bundled SmolLM2-135M-Instruct Q4_1), the same prompt, greedy,
the same number of new tokens and the same threads, alternating in one run:

- Token Lab's default CPU engine: `/chat` through gradio's REST API of `python app.py --model bundled`, as
  bench_chat measures it (ONNX Runtime on int8 weights converted from the dequantized GGUF);
- Token Lab's exact engine: the same with `--engine torch` (the weights dequantized to float32);
- llama.cpp in-process: llama-cpp-python in its own Python (bench/llamacpp_worker.py), fed the prompt ids that the
  app builds;
- Token Lab with `--engine-url` on llama.cpp's OpenAI-compatible server: the same `/chat`, decoded by llama.cpp
  (llama-cpp-python's server, or llama.cpp's own C++ `llama-server` when TOKEN_LAB_LLAMA_SERVER names its binary).

Each gets tokens/s (tokens ÷ time from the request to the last token), decode tokens/s (after the first token) and
time to first token, as ratios to llama.cpp in-process. Every round sends a new message, so each engine reuses only
the chat template's system turn from the previous request, as each does by default (Token Lab's prefix cache,
llama.cpp's prompt-prefix match). Also the read bandwidth (1 GiB of float32 summed by as many threads) and the bound
it sets for float32 weights: every decoding step reads every weight once.

llama.cpp comes from its own environment (`make llamacpp`, or TOKEN_LAB_LLAMACPP_PYTHON=/path/to/python); without
one this prints one line and does nothing, so `make bench` runs anywhere.

    python -m bench.bench_llamacpp [--runs 5] [--tokens 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from bench.app_process import free_port, start_app
from bench.clients import new_session, rest_chat
from bench.llamacpp import LlamaCppWorker, find_llamacpp, llama_server_command, server_command
from bench.results_io import write_results
from core.config import default_cache_dir
from core.model.bundled import bundled_checkpoint, bundled_gguf_path
from core.model.embeddings_only import load_embeddings_only
from core.text.prompt import PromptBuilder

PROMPT = "Write a long story about a dragon who learns to read."
LLAMA_SERVER_ENV = "TOKEN_LAB_LLAMA_SERVER"  # a llama-server binary: the remote row uses it instead
LOCAL, LLAMACPP = "Token Lab /chat, default CPU engine (ONNX Runtime, int8)", "llama.cpp in-process"
EXACT = "Token Lab /chat, --engine torch (float32)"
REMOTE = ("Token Lab /chat, --engine-url llama-server" if os.environ.get(LLAMA_SERVER_ENV)
          else "Token Lab /chat, --engine-url llama-cpp-python's server")
SERVER_START_TIMEOUT = 120


def read_bandwidth_gb_s(threads: int, repeats: int = 5) -> float:
    """GB/s read: 1 GiB of float32 summed in `threads` slices at once (numpy's sum runs on one thread and releases
    the GIL), best of `repeats`."""
    data = np.ones(1 << 28, dtype=np.float32)
    parts = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.sum, parts))
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


def start_server(python, port: int, threads: int) -> subprocess.Popen:
    """llama.cpp's server, ready to answer (its model list answers): llama-server when TOKEN_LAB_LLAMA_SERVER names
    it, else llama-cpp-python's."""
    binary = os.environ.get(LLAMA_SERVER_ENV)
    command = (llama_server_command(binary, bundled_gguf_path(), port, threads) if binary
               else server_command(python, bundled_gguf_path(), port, threads))
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"llama.cpp's server did not start (exit status {server.poll()})")
        time.sleep(0.5)


def sample(total_s: float, ttft_s: float, tokens: int) -> dict:
    decode = (tokens - 1) / (total_s - ttft_s) if tokens > 1 and total_s > ttft_s else None
    return {"tok_s": tokens / total_s, "decode_tok_s": decode, "ttft_s": ttft_s, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    python, reason = find_llamacpp()
    if python is None:
        print(f"bench_llamacpp skipped: {reason}")
        return
    # the tokenizer and context length build the prompt ids as the app does; the weights stay in the app
    loaded = load_embeddings_only("bundled", device="cpu", dtype="auto", cache_dir=default_cache_dir())
    tokenizer, builder = loaded.tokenizer, PromptBuilder(loaded.tokenizer)
    # what the default engine reads per token: the float32 checkpoint it loads (tied embeddings stored once)
    weight_bytes = (bundled_checkpoint(default_cache_dir())[0] / "model.safetensors").stat().st_size
    bandwidth = read_bandwidth_gb_s(args.threads)
    env = {"OMP_NUM_THREADS": str(args.threads)}  # torch's threads in the app
    port = free_port()
    server = start_server(python, port, args.threads)
    local = start_app("--model", "bundled", env=env)
    exact = start_app("--model", "bundled", "--engine", "torch", env=env)
    remote = start_app("--model", "bundled", "--engine-url", f"http://127.0.0.1:{port}", env=env)
    http, session = httpx.Client(timeout=300), new_session()
    samples: dict[str, list[dict]] = {LOCAL: [], LLAMACPP: [], EXACT: [], REMOTE: []}
    load_before = os.getloadavg()
    try:
        with LlamaCppWorker(python, bundled_gguf_path(), args.threads) as worker:
            for app in (local, exact, remote):
                app.wait_ready()
            for round_ in range(args.runs + 1):  # round 0 warms every engine up
                message = f"{PROMPT} (Round {round_}.)"
                ids = builder.build(message, [], "", args.tokens, loaded.context_length).ids
                measured = {}
                for name, app in ((LOCAL, local), (EXACT, exact), (REMOTE, remote)):
                    rate, first, n = rest_chat(app.url, message, tokenizer, args.tokens, http, session)
                    measured[name] = sample(n / rate, first, n)
                out = worker.generate(ids, args.tokens)
                measured[LLAMACPP] = sample(out["total_s"], out["ttft_s"], len(out["ids"]))
                if round_:
                    for name, value in measured.items():
                        samples[name].append(value)
    finally:
        http.close()
        for app in (local, exact, remote):
            app.stop()
        server.terminate()
        server.wait(15)

    def median(name: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[name] if s[key] is not None)

    base_rate, base_ttft = median(LLAMACPP, "tok_s"), median(LLAMACPP, "ttft_s")
    gguf_bytes = bundled_gguf_path().stat().st_size
    data = {"threads": args.threads, "tokens": args.tokens, "runs": args.runs, "samples": samples,
            "ratio_tok_s": {name: median(name, "tok_s") / base_rate for name in samples},
            "read_bandwidth_gb_s": bandwidth, "float32_weight_bytes": weight_bytes, "gguf_bytes": gguf_bytes,
            "float32_bound_tok_s": bandwidth * 1e9 / weight_bytes, "gguf_bound_tok_s": bandwidth * 1e9 / gguf_bytes,
            "load_average_before_after": [load_before, os.getloadavg()], "llamacpp_python": str(python),
            "llama_server": os.environ.get(LLAMA_SERVER_ENV)}
    table = []
    for name in (LLAMACPP, LOCAL, EXACT, REMOTE):
        rate, ttft = median(name, "tok_s"), median(name, "ttft_s")
        table += [(f"{name}: tokens/s (median; ÷ llama.cpp)", f"{rate:.1f} ({rate / base_rate:.2f})"),
                  (f"{name}: decode tokens/s after the first", f"{median(name, 'decode_tok_s'):.1f}"),
                  (f"{name}: time to first token (× llama.cpp's)", f"{ttft * 1000:.0f} ms ({ttft / base_ttft:.1f}×)")]
    table += [(f"read bandwidth, 1 GiB float32 sum on {args.threads} threads", f"{bandwidth:.1f} GB/s"),
              (f"bound for float32 weights ({weight_bytes / 1e6:.0f} MB read per token)",
               f"{bandwidth * 1e9 / weight_bytes:.0f} tok/s"),
              (f"bound for the Q4_1 GGUF ({gguf_bytes / 1e6:.0f} MB file)",
               f"{bandwidth * 1e9 / gguf_bytes:.0f} tok/s"),
              ("greedy, new tokens, threads, rounds", f"yes, {args.tokens}, {args.threads}, {args.runs}")]
    write_results("llamacpp", data, table)


if __name__ == "__main__":
    main()
