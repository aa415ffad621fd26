"""Light benchmark clients: they wait on the network instead of polling, so on a 2-core machine they leave the
CPU to the server being measured."""

from __future__ import annotations

import json
import time

import httpx


def rest_chat(url: str, prompt: str, tokenizer, tokens: int) -> tuple[float, float, int]:
    """(tokens/s, time to first token, tokens) of one greedy /chat call through gradio's REST API
    (POST /gradio_api/call/chat, then its SSE stream): a light client that does not poll."""
    start = time.perf_counter()
    data = [prompt, [], "", 0.0, 1.0, tokens, None, 50, 1.0]
    event_id = httpx.post(f"{url}gradio_api/call/chat", json={"data": data}, timeout=60).json()["event_id"]
    first, text = None, ""
    with httpx.stream("GET", f"{url}gradio_api/call/chat/{event_id}", timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and line != "data: null":
                payload = json.loads(line[5:])
                if isinstance(payload, list) and payload:
                    text = payload[0]
                if first is None and text:  # the first token, not merely the first event
                    first = time.perf_counter() - start
    elapsed = time.perf_counter() - start
    generated = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return generated / elapsed, first or elapsed, generated


def client_chat(client, message: str, history: list, tokens: int) -> tuple[float, float, str]:
    """(time to first token, total seconds, final text) of one greedy /chat call streamed with gradio_client's
    iterator. That iterator polls every millisecond, which on a 2-core machine takes CPU from the server measured."""
    start = time.perf_counter()
    job = client.submit(message, history, "", 0.0, 1.0, tokens, None, api_name="/chat")
    first = None
    for update in job:
        if first is None and update:  # the first token, not merely the first event
            first = time.perf_counter() - start
    text = job.outputs()[-1] if job.outputs() else ""
    total = time.perf_counter() - start
    return first if first is not None else total, total, text
