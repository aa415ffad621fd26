"""The chat's typed API endpoints: /chat (streamed), /chat_logprobs, /prompt and /engine_stats.

They sit beside the Chat tab's page handlers (demo/chat_tab.py) and share its checks; each is a gr.api endpoint, so
its docstring is the API's documentation and its parameters the API's (gradio reads both from the function).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import gradio as gr
from anyio import to_thread

from core.config import RequestLimits
from core.engine.settings import GenerationSettings
from core.engine.stream import ChatStream
from core.host import ModelHost
from demo.errors import api_errors

TOP_LOGPROBS = 5  # alternatives recorded for each answer token in the page and in /chat_logprobs
F = TypeVar("F", bound=Callable[..., Any])

ASKING = """
        Args:
            message: the new user message.
            history: earlier turns as [{"role": "user" | "assistant" | "system", "content": str}].
            system_prompt: optional instructions placed first in the prompt.
            temperature: 0 for greedy decoding; higher is more random (0 to 5).
            top_p: nucleus sampling probability mass (above 0, at most 1).
            max_new_tokens: the most tokens to generate.
            seed: a seed for reproducible sampling (same seed and settings, same answer); null for random.
            top_k: sample among the k most likely tokens (0 = off).
            repetition_penalty: > 1 discourages repeating tokens."""


def asking(summary: str, returns: str = "") -> Callable[[F], F]:
    """Document an endpoint that takes a chat request's parameters: its summary, the shared Args, its Returns."""
    def document(fn: F) -> F:
        fn.__doc__ = summary + "\n" + ASKING + (f"\n        Returns:\n            {returns}" if returns else "")
        return fn
    return document


def generation_settings(temperature: Any, top_p: Any, top_k: Any, repetition_penalty: Any, max_new_tokens: Any,
                        seed: Any, limits: RequestLimits, top_logprobs: int | None = None) -> GenerationSettings:
    """The request's sampling controls, checked (types and ranges) against the server's limits."""
    return GenerationSettings(temperature=temperature, top_p=top_p, top_k=top_k,
                              repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
                              seed=seed, top_logprobs=top_logprobs).validated(limits.max_new_tokens)


def register_chat_api(host: ModelHost) -> None:
    """Add the chat's endpoints to the Blocks being built."""

    async def answer(message: str, history: list[dict], system_prompt: str, settings: tuple[Any, ...],
                     top_logprobs: int | None = None) -> ChatStream:
        """Start the answer; templating and tokenizing happen in a worker thread, off the event loop."""
        engine = host.require().engine
        checked = generation_settings(*settings, host.config.limits, top_logprobs)
        return await to_thread.run_sync(lambda: engine.chat(message, history, system_prompt, checked))

    @api_errors
    @asking("Stream the model's answer to `message` after `history`, as the cumulative text so far.")
    async def chat(message: str, history: list[dict], system_prompt: str = "", temperature: float = 0.7,
                   top_p: float = 0.95, max_new_tokens: int = 256, seed: int | None = None, top_k: int = 50,
                   repetition_penalty: float = 1.0) -> AsyncIterator[str]:
        stream = await answer(message, history, system_prompt,
                              (temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed))
        async for text in stream:
            yield text

    @api_errors
    @asking("The model's answer to `message` after `history`, with each answer token's probability and the five "
            "most\n        likely tokens at its step (OpenAI's `logprobs.content` shape).",
            returns='{"answer": str, "logprobs": [{"token", "logprob", "bytes", "top_logprobs": [{"token", '
                    '"logprob",\n            "bytes"}]}], "stop_reason": str, "note": str}; the tokens concatenate '
                    'to the answer; log-probabilities\n            are the model\'s own (before temperature, top-k '
                    'and top-p); "note" says why they are missing, when a\n            remote server returns none.')
    async def chat_logprobs(message: str, history: list[dict], system_prompt: str = "", temperature: float = 0.7,
                            top_p: float = 0.95, max_new_tokens: int = 256, seed: int | None = None, top_k: int = 50,
                            repetition_penalty: float = 1.0) -> dict[str, Any]:
        stream = await answer(message, history, system_prompt,
                              (temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed), TOP_LOGPROBS)
        async for _text in stream:  # consumed here, so that a client going away stops the generation
            pass
        logprobs = await to_thread.run_sync(lambda: stream.answer_logprobs() or [])
        return {"answer": stream.text, "logprobs": logprobs, "stop_reason": stream.stop_reason,
                "note": stream.logprobs_note}

    @api_errors
    def prompt(message: str, history: list[dict], system_prompt: str = "") -> dict[str, Any]:
        """The exact token ids the model would receive for `message` after `history`, via its chat template.

        Args:
            message: the new user message.
            history: earlier turns as [{"role": ..., "content": ...}].
            system_prompt: optional system prompt.
        Returns:
            {"text": rendered prompt, "ids": token ids, "count": number of ids, "dropped_turns": int}
        """
        p = host.require().engine.prompt(message, history, system_prompt)
        return {"text": p.text, "ids": p.ids, "count": len(p.ids), "dropped_turns": p.dropped_turns}

    @api_errors
    def engine_stats() -> dict[str, Any]:
        """What the chat engine is doing: requests in progress, the largest batch so far, (for the in-process
        engine) the prefix cache's size and how much of the prompts it served and the Inside views' inspections on
        its worker, and the heavy work beside the chats: evaluations running and waiting, and the fair share.

        Returns:
            {"engine": str, "runner": str ("onnx int8" or "torch float32"; in-process only),
             "requests_in_progress": int, "max_queue": int, "requests_accepted": int, "peak_batch": int,
             "recent": {"requests": int, "ttft_p50_s": float | None, "ttft_p95_s": ...,
             "queued_p50_s": ..., "queued_p95_s": ...} (a window of the latest finished requests, timed in the
             server), "max_batch": int, "prefix_cache": {"sequences": int, "bytes": int, "max_bytes": int,
             "lookups": int, "hits": int, "reused_token_share": float},
             "inspections": {"running": int, "waiting": int, "finished": int, "cancelled": int},
             "evaluations": {"running": int, "waiting": int, "peak_running": int, "waited": int, "finished": int,
             "cancelled": int}, "fair_share": {"share": float, "chatting": bool, "heavy_steps": int,
             "heavy_step_seconds": float, "rested_steps": int, "deferred_steps": int}}
        """
        return host.require().engine.stats() | host.work.stats()

    gr.api(chat, api_name="chat", concurrency_limit=None)
    gr.api(chat_logprobs, api_name="chat_logprobs", concurrency_limit=None)
    gr.api(prompt, api_name="prompt", concurrency_limit=None)
    gr.api(engine_stats, api_name="engine_stats", concurrency_limit=None)
