"""Chat tab: a streaming chat through the model's own chat template, with stats and a prompt inspector.

gr.ChatInterface provides retry, undo, edit, clear, Stop and examples; the handler below streams from the shared
ChatEngine and cancels its request when the user stops or disconnects. Building a prompt (checking, templating and
tokenizing a conversation) runs in a worker thread: the event loop that serves every user only awaits. The list
beside the chat (demo/conversations.py) keeps conversations in the person's own browser and restores them here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import gradio as gr
from anyio import to_thread

from core.chat.conversation import REPETITION_PENALTY, STATS_TITLE, TEMPERATURE, TOP_K, TOP_P, new_id
from core.engine.settings import GenerationSettings
from core.engine.stream import ChatStats, ChatStream
from core.host import ModelHost
from core.text.messages import newest_within
from core.text.tokens import tokens_for_ids
from demo.answer_probs import (
    ALTERNATIVE_HEADERS,
    TABLE_HEADERS,
    alternative_rows,
    probability_outputs,
    probability_view,
    visible,
)
from demo.chat_markdown import safe_chatbot
from demo.conversations import ChatView, conversation_sidebar, wire_conversations
from demo.errors import api_errors, ui_errors
from demo.token_view import token_highlights, token_view

INTRO = ("Talk to the model. Each message goes through the model's own chat template; the answer streams in and "
         "stops at the model's end-of-turn token. Open **What the model receives** to see the exact tokens of the "
         "prompt, control tokens included.")
PROBS_INTRO = ("The last answer, each token coloured by the probability the model gave it; click a token to see the "
               "five tokens it found most likely at that step. On a CPU these come from the int8 model the chat runs "
               "on (ONNX Runtime), so they can differ a little from the Inside tab, which reads the float32 weights.")
TOP_LOGPROBS = 5  # alternatives recorded for each answer token in the page and in /chat_logprobs
EXAMPLES = ["What is the capital of Japan?", "Explain tokenization to a ten-year-old.",
            "Write a haiku about embeddings.", "Translate 'good morning' into French, Spanish and German."]


def _settings(temperature: Any, top_p: Any, top_k: Any, repetition_penalty: Any, max_new_tokens: Any,
              seed: Any, max_new_tokens_limit: int, top_logprobs: int | None = None) -> GenerationSettings:
    """The request's sampling controls, checked (types and ranges) against the server's limits."""
    return GenerationSettings(temperature=temperature, top_p=top_p, top_k=top_k,
                              repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
                              seed=seed, top_logprobs=top_logprobs).validated(max_new_tokens_limit)


def stats_line(stats: ChatStats) -> str:
    """The line under an answer: '36 prompt tokens (21 reused from cache) · 12 generated · … · stop: end of turn'."""
    cached = f" ({stats.cached_prompt_tokens} reused from cache)" if stats.cached_prompt_tokens else ""
    parts = [f"{stats.prompt_tokens} prompt tokens{cached}", f"{stats.generated_tokens} generated"]
    if stats.ttft_s is not None:
        parts.append(f"first token {stats.ttft_s:.2f} s")
    if stats.tokens_per_s is not None:
        parts.append(f"{stats.tokens_per_s:.1f} tok/s")
    parts.append(f"stop: {stats.stop_reason or 'running'}")
    if stats.dropped_turns:
        parts.append(f"{stats.dropped_turns} oldest messages dropped to fit the context")
    return " · ".join(parts)


def _stats_message(stream: ChatStream) -> dict[str, Any]:
    """The stats under an answer, with a spinner while it runs. A finished one carries no status: gradio folds a
    "done" message shut, and the finished line (speed, stop reason) is what a reader wants to see."""
    metadata = {"title": STATS_TITLE} if stream.done else {"title": STATS_TITLE, "status": "pending"}
    return {"role": "assistant", "content": stats_line(stream.stats), "metadata": metadata}


def mark_stopped(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """After Stop, the cancelled handler cannot update its stats line; say so in the last one."""
    for message in reversed(history):
        meta = message.get("metadata") or {}
        if message.get("role") == "assistant" and meta.get("title") == STATS_TITLE:
            message["content"] = str(message["content"]).replace("stop: running", "stop: stopped")
            message["metadata"] = {k: v for k, v in meta.items() if k != "status"}  # finished: shown open
            break
    return history


def build_chat_tab(host: ModelHost) -> None:
    limits = host.config.limits

    def ui_history(history: list[dict]) -> list[dict]:
        """The page sends its whole conversation; only the newest messages within the limits can reach the model."""
        return newest_within(history or [], limits.max_history_messages, limits.max_history_chars)

    def prompt_tokens(message: str, history: list[dict], system_prompt: str, max_new_tokens: int) -> list:
        parts = host.require()
        prompt = parts.engine.prompt(message, ui_history(history), system_prompt, int(max_new_tokens))
        return token_highlights(tokens_for_ids(parts.loaded.tokenizer, prompt.ids))

    @ui_errors
    async def respond(message: str, history: list[dict], system_prompt: str, temperature: float, top_p: float,
                      top_k: int, repetition_penalty: float, max_new_tokens: int,
                      seed: float | None) -> AsyncIterator[tuple[Any, ...]]:
        parts = host.require()
        settings = _settings(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed,
                             limits.max_new_tokens, TOP_LOGPROBS)

        def prepare() -> tuple[Any, list]:
            prompt = parts.engine.prompt(message, ui_history(history), system_prompt, settings.max_new_tokens)
            return prompt, token_highlights(tokens_for_ids(parts.loaded.tokenizer, prompt.ids))

        prompt, inspector = await to_thread.run_sync(prepare)
        if prompt.dropped_turns:
            gr.Info(f"Dropped the {prompt.dropped_turns} oldest messages so the conversation fits the context.")
        stream = parts.engine.submit(prompt, settings)
        later = [gr.skip()] * 6  # the probability view is drawn once the answer is complete, then it is kept
        async for text in stream:
            yield [{"role": "assistant", "content": text}, _stats_message(stream)], inspector, *later
        entries = visible(await to_thread.run_sync(lambda: stream.answer_logprobs() or []))
        yield ([{"role": "assistant", "content": stream.text}, _stats_message(stream)], inspector,
               *probability_outputs(entries, stream.logprobs_note), new_id())
        if not stream.text.strip():
            gr.Warning(f"The model returned an empty answer (stop: {stream.stop_reason}).")

    @api_errors
    async def chat(message: str, history: list[dict], system_prompt: str = "", temperature: float = 0.7,
                   top_p: float = 0.95, max_new_tokens: int = 256, seed: int | None = None, top_k: int = 50,
                   repetition_penalty: float = 1.0) -> AsyncIterator[str]:
        """Stream the model's answer to `message` after `history`, as the cumulative text so far.

        Args:
            message: the new user message.
            history: earlier turns as [{"role": "user" | "assistant" | "system", "content": str}].
            system_prompt: optional instructions placed first in the prompt.
            temperature: 0 for greedy decoding; higher is more random (0 to 5).
            top_p: nucleus sampling probability mass (above 0, at most 1).
            max_new_tokens: the most tokens to generate.
            seed: a seed for reproducible sampling (same seed and settings, same answer); null for random.
            top_k: sample among the k most likely tokens (0 = off).
            repetition_penalty: > 1 discourages repeating tokens.
        """
        engine = host.require().engine
        settings = _settings(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed,
                             limits.max_new_tokens)
        stream = await to_thread.run_sync(lambda: engine.chat(message, history, system_prompt, settings))
        async for text in stream:
            yield text

    @api_errors
    async def chat_logprobs(message: str, history: list[dict], system_prompt: str = "", temperature: float = 0.7,
                            top_p: float = 0.95, max_new_tokens: int = 256, seed: int | None = None, top_k: int = 50,
                            repetition_penalty: float = 1.0) -> dict[str, Any]:
        """The model's answer to `message` after `history`, with each answer token's probability and the five most
        likely tokens at its step (OpenAI's `logprobs.content` shape).

        Args:
            message: the new user message.
            history: earlier turns as [{"role": "user" | "assistant" | "system", "content": str}].
            system_prompt: optional instructions placed first in the prompt.
            temperature: 0 for greedy decoding; higher is more random (0 to 5).
            top_p: nucleus sampling probability mass (above 0, at most 1).
            max_new_tokens: the most tokens to generate.
            seed: a seed for reproducible sampling; null for random.
            top_k: sample among the k most likely tokens (0 = off).
            repetition_penalty: > 1 discourages repeating tokens.
        Returns:
            {"answer": str, "logprobs": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
            "bytes"}]}], "stop_reason": str, "note": str}; the tokens concatenate to the answer; log-probabilities
            are the model's own (before temperature, top-k and top-p); "note" says why they are missing, when a
            remote server returns none.
        """
        engine = host.require().engine
        settings = _settings(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed,
                             limits.max_new_tokens, TOP_LOGPROBS)
        stream = await to_thread.run_sync(lambda: engine.chat(message, history, system_prompt, settings))
        async for _text in stream:
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

    def show_alternatives(shown_entries: list[dict], evt: gr.SelectData) -> list[list[Any]]:
        """The alternatives of the token clicked in the probability view."""
        index = evt.index if isinstance(evt.index, int) else -1
        return alternative_rows(shown_entries[index]) if 0 <= index < len(shown_entries or []) else []

    @api_errors
    def engine_stats() -> dict[str, Any]:
        """What the chat engine is doing: requests in progress, the largest batch so far, (for the in-process
        engine) the prefix cache's size and how much of the prompts it served and the Inside views' inspections on
        its worker, and the heavy work beside the chats: evaluations running and waiting, and the fair share.

        Returns:
            {"engine": str, "runner": str ("onnx int8" or "torch float32"; in-process only),
             "requests_in_progress": int, "max_queue": int, "requests_accepted": int, "peak_batch": int,
             "recent": {"requests": int, "ttft_p50_s": float | None, "ttft_p95_s": ...,
             "queued_p50_s": ..., "queued_p95_s": ...} (the last 256 finished requests, timed in the server),
             "max_batch": int, "prefix_cache": {"sequences": int, "bytes": int, "max_bytes": int,
             "lookups": int, "hits": int, "reused_token_share": float},
             "inspections": {"running": int, "waiting": int, "finished": int, "cancelled": int},
             "evaluations": {"running": int, "waiting": int, "peak_running": int, "waited": int, "finished": int,
             "cancelled": int}, "fair_share": {"share": float, "chatting": bool, "heavy_steps": int,
             "heavy_step_seconds": float, "rested_steps": int, "deferred_steps": int}}
        """
        return host.require().engine.stats() | host.work.stats()

    with gr.Tab("Chat", id="chat"):
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=220, elem_id="conversations"):
                sidebar = conversation_sidebar()
            with gr.Column(scale=4):
                with gr.Row(equal_height=False):
                    system_prompt = gr.Textbox(label="System prompt", lines=1, scale=2, elem_id="system-prompt",
                                               placeholder="Optional: instructions for the model")
                    with gr.Accordion("Generation settings", open=False), gr.Group():
                        temperature = gr.Slider(*TEMPERATURE, value=0.7, step=0.05, label="Temperature (0 = greedy)",
                                                elem_id="chat-temperature")
                        top_p = gr.Slider(*TOP_P, value=0.95, step=0.05, label="Top-p")
                        top_k = gr.Slider(*TOP_K, value=50, step=1, label="Top-k (0 = off)")
                        repetition_penalty = gr.Slider(*REPETITION_PENALTY, value=1.0, step=0.05,
                                                       label="Repetition penalty")
                        max_new_tokens = gr.Slider(1, host.config.max_new_tokens_limit, value=256, step=1,
                                                   label="Max new tokens", elem_id="chat-max-new-tokens")
                        seed = gr.Number(value=None, precision=0, label="Seed (empty = random)",
                                         elem_id="chat-seed")
                inspector = token_view("Prompt tokens (last message); control tokens are marked",
                                       elem_id="prompt-inspector", render=False)
                chatbot = safe_chatbot(height=460, elem_id="chatbot", label="Conversation")
                probs_view = probability_view("Answer tokens by probability", elem_id="answer-probs", render=False)
                probs_table = gr.Dataframe(headers=TABLE_HEADERS, datatype=["number", "str", "str", "str"],
                                           interactive=False, max_height=300, label="Every token of the answer",
                                           elem_id="answer-probs-table", line_breaks=False, render=False, scale=2)
                picked = gr.Dataframe(headers=ALTERNATIVE_HEADERS, datatype=["str", "str", "str"], interactive=False,
                                      label="The clicked token's alternatives", elem_id="answer-alternatives",
                                      line_breaks=False, render=False, scale=1)
                # shown when there are no probabilities: a remote server sent none, or a restored answer kept none
                probs_note = gr.Textbox(show_label=False, interactive=False, visible=False, container=False,
                                        render=False, elem_id="answer-probs-note")
                entries = gr.State([])
                answered = gr.State(None)  # a fresh id once an answer is complete: the conversation is then kept
                textbox = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, lines=1,
                                     max_lines=8, submit_btn=True, stop_btn=True, elem_id="chat-input", render=False)
                interface = gr.ChatInterface(
                    respond, chatbot=chatbot, textbox=textbox, editable=True, autofocus=False,
                    additional_inputs=[system_prompt, temperature, top_p, top_k, repetition_penalty, max_new_tokens,
                                       seed],
                    additional_outputs=[inspector, probs_view, probs_table, picked, entries, probs_note, answered],
                    examples=[[e] for e in EXAMPLES], api_name="chat_ui", api_visibility="undocumented",
                    concurrency_limit=None, fill_height=False,  # the engine's bounded queue decides: "busy" beyond it
                )
                with gr.Accordion("Answer tokens by probability", open=False, elem_id="answer-probs-accordion"):
                    gr.Markdown(PROBS_INTRO)
                    probs_note.render()
                    probs_view.render()
                    with gr.Row(equal_height=False):
                        picked.render()
                        probs_table.render()
                with gr.Accordion("What the model receives", open=False):
                    inspector.render()
                    preview = gr.Button("Preview the prompt for the text in the box", size="sm")

        stopped = textbox.stop(mark_stopped, chatbot, chatbot, queue=False, api_visibility="private")
        wire_conversations(sidebar, ChatView(
            chatbot=chatbot, chat_state=interface.chatbot_state, system_prompt=system_prompt,
            settings=[temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed], inspector=inspector,
            probabilities=[probs_view, probs_table, picked, entries, probs_note], answered=answered, stopped=stopped,
            inspect=prompt_tokens, max_new_tokens_limit=host.config.max_new_tokens_limit))
        preview.click(ui_errors(prompt_tokens), [interface.textbox, chatbot, system_prompt, max_new_tokens],
                      inspector, api_visibility="private")
        probs_view.select(show_alternatives, entries, picked, queue=False, api_visibility="private")
        gr.api(chat, api_name="chat", concurrency_limit=None)
        gr.api(chat_logprobs, api_name="chat_logprobs", concurrency_limit=None)
        gr.api(prompt, api_name="prompt", concurrency_limit=None)
        gr.api(engine_stats, api_name="engine_stats", concurrency_limit=None)
