"""Light benchmark clients: they wait on the network instead of polling, so on a 2-core machine they leave the
CPU to the server being measured."""

from __future__ import annotations

import json
import time
import uuid

import httpx


def new_session() -> str:
    """A session id, as a browser tab or a gradio_client Client holds one for all its calls: gradio builds each
    new session's copy of the app's config (~10 ms of CPU here), so one-off sessions would measure that."""
    return uuid.uuid4().hex


def request_body(data: list, session: str | None) -> dict:
    """A REST call's JSON body; with a session id, gradio reuses that session."""
    return {"data": data} | ({"session_hash": session} if session else {})


def rest_chat(url: str, prompt: str, tokenizer, tokens: int, http: httpx.Client | None = None,
              session: str | None = None) -> tuple[float, float, int]:
    """(tokens/s, time to first token, tokens) of one greedy /chat call through gradio's REST API
    (POST /gradio_api/call/chat, then its SSE stream): a light client that does not poll.

    Pass a long-lived `http` client, as a browser keeps its connections: `httpx.post` builds a new client, and
    with it an SSL context (~20 ms of CPU), per call, which on 2 cores slows the server being measured."""
    if http is None:
        with httpx.Client(timeout=120) as own:
            return rest_chat(url, prompt, tokenizer, tokens, own, session)
    start = time.perf_counter()
    data = [prompt, [], "", 0.0, 1.0, tokens, None, 50, 1.0]
    event_id = http.post(f"{url}gradio_api/call/chat", json=request_body(data, session)).json()["event_id"]
    first, text = None, ""
    with http.stream("GET", f"{url}gradio_api/call/chat/{event_id}") as response:
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


def rest_call(http: httpx.Client, url: str, api_name: str, data: list, session: str | None = None) -> object:
    """The final result of one gradio API call through the REST API (POST, then read its event stream)."""
    event_id = http.post(f"{url}gradio_api/call/{api_name}", json=request_body(data, session)).json()["event_id"]
    result = None
    with http.stream("GET", f"{url}gradio_api/call/{api_name}/{event_id}") as response:
        for line in response.iter_lines():
            if line.startswith("data:") and line != "data: null":
                payload = json.loads(line[5:])
                result = payload[0] if isinstance(payload, list) and payload else payload
    return result
