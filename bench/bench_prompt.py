"""Fitting long conversations into the context: the cost per history message stays flat (or falls) as the history
grows, and a 10,000-message request costs the server well under a second of CPU.

1. `PromptBuilder.build` on histories of 1,000, 10,000 and 100,000 messages (alternating "hi" / "hello"), the
   context of the bundled model (8,192 tokens, 256 new): seconds and microseconds per message, and each size's cost
   per message ÷ the 1,000-message one (target: ≤ 2; the work is bounded by the context, so it falls).
2. The real app (`python app.py --model bundled`): CPU seconds the server process spends on one `/prompt` and one
   `/chat` (1 new token) with 10,000 messages of history, read from /proc before and after.

    python -m bench.bench_prompt [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from pathlib import Path

import httpx
from transformers import AutoTokenizer

from bench.app_process import start_app
from bench.results_io import write_results
from core.config import default_cache_dir
from core.model.bundled import bundled_checkpoint
from core.text.prompt import PromptBuilder

SIZES = (1_000, 10_000, 100_000)


def chatter(messages: int) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi" if i % 2 == 0 else "hello"}
            for i in range(messages)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(app, http: httpx.Client, name: str, data: list) -> tuple[float, str]:
    """CPU seconds the server spent answering one REST call, and the event that ended it."""
    body = {"data": data, "session_hash": uuid.uuid4().hex}
    time.sleep(0.5)  # let the idle server settle
    before = cpu_seconds(app.proc.pid)
    event_id = http.post(f"{app.url}gradio_api/call/{name}", json=body).json()["event_id"]
    kind = ""
    with http.stream("GET", f"{app.url}gradio_api/call/{name}/{event_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.removeprefix("event:").strip()
    return cpu_seconds(app.proc.pid) - before, kind


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    folder, _ = bundled_checkpoint(default_cache_dir())
    builder = PromptBuilder(AutoTokenizer.from_pretrained(folder))
    builder.build("warm up", chatter(10), "", 256, 8192)
    core: dict[int, dict[str, float]] = {}
    for size in SIZES:
        history = chatter(size)
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            prompt = builder.build("q", history, "", 256, 8192)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        core[size] = {"seconds": seconds, "us_per_message": seconds / size * 1e6, "dropped": prompt.dropped_turns,
                      "prompt_tokens": len(prompt.ids)}
    base = core[SIZES[0]]["us_per_message"]
    for size in SIZES:
        core[size]["per_message_vs_1k"] = core[size]["us_per_message"] / base

    app = start_app("--model", "bundled")
    try:
        app.wait_ready()
        with httpx.Client(timeout=300) as http:
            history = chatter(10_000)
            prompt_cpu, prompt_end = server_cpu(app, http, "prompt", ["What is 2+2?", history, ""])
            chat_cpu, chat_end = server_cpu(app, http, "chat", ["What is 2+2?", history, "", 0.0, 1.0, 1, None, 50,
                                                                1.0])
    finally:
        app.stop()

    table = [(f"build, {size:,} messages", f"{c['seconds'] * 1000:.1f} ms = {c['us_per_message']:.1f} µs/message "
              f"(÷ 1k: {c['per_message_vs_1k']:.2f}); {c['dropped']:,} dropped, {c['prompt_tokens']:,} tokens kept")
             for size, c in core.items()]
    table += [("server CPU, /prompt with 10,000 messages", f"{prompt_cpu:.2f} s ({prompt_end})"),
              ("server CPU, /chat with 10,000 messages (1 new token)", f"{chat_cpu:.2f} s ({chat_end})")]
    write_results("prompt", {"core": {str(k): v for k, v in core.items()}, "server_cpu_prompt_10k_s": prompt_cpu,
                             "server_cpu_chat_10k_s": chat_cpu, "ends": [prompt_end, chat_end]}, table)
    print(json.dumps({"per_message_vs_1k": [core[s]["per_message_vs_1k"] for s in SIZES]}))


if __name__ == "__main__":
    main()
