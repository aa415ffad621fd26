"""Chat tab: a streaming chat through the model's own chat template, with stats and a prompt inspector.

gr.ChatInterface provides retry, undo, edit, clear, Stop and examples; the handler below streams from the shared
ChatEngine and cancels its request when the user stops or disconnects. Building a prompt (checking, templating and
tokenizing a conversation) runs in a worker thread: the event loop that serves every user only awaits. The list
beside the chat (demo/conversations.py) keeps conversations in the person's own browser and restores them here; the
chat's API endpoints are in demo/chat_api.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import gradio as gr
from anyio import to_thread

from core.chat.conversation import REPETITION_PENALTY, STATS_TITLE, TEMPERATURE, TOP_K, TOP_P, new_id
from core.engine.logprobs import listed_positions
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
from demo.attribution_view import build_why_this_token, why_state
from demo.chat_api import TOP_LOGPROBS, generation_settings, register_chat_api
from demo.chat_markdown import safe_chatbot
from demo.conversations import ChatView, conversation_sidebar, wire_conversations
from demo.errors import ui_errors
from demo.token_view import token_highlights, token_view

INTRO = ("Talk to the model. Each message goes through the model's own chat template; the answer streams in and "
         "stops at the model's end-of-turn token. Open **What the model receives** to see the exact tokens of the "
         "prompt, control tokens included.")
PROBS_INTRO = ("The last answer, each token coloured by the probability the model gave it; click a token to see the "
               "five tokens it found most likely at that step. On a CPU these come from the int8 model the chat runs "
               "on (ONNX Runtime), so they can differ a little from the Inside tab, which reads the float32 weights.")
EXAMPLES = ["What is the capital of Japan?", "Explain tokenization to a ten-year-old.",
            "Write a haiku about embeddings.", "Translate 'good morning' into French, Spanish and German."]


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
        settings = generation_settings(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed, limits,
                                       TOP_LOGPROBS)

        def prepare() -> tuple[Any, list]:
            prompt = parts.engine.prompt(message, ui_history(history), system_prompt, settings.max_new_tokens)
            return prompt, token_highlights(tokens_for_ids(parts.loaded.tokenizer, prompt.ids))

        prompt, inspector = await to_thread.run_sync(prepare)
        if prompt.dropped_turns:
            gr.Info(f"Dropped the {prompt.dropped_turns} oldest messages so the conversation fits the context.")
        stream = parts.engine.submit(prompt, settings)
        later = [gr.skip()] * 7  # the probability view is drawn once the answer is complete, then it is kept
        async for text in stream:
            yield [{"role": "assistant", "content": text}, _stats_message(stream)], inspector, *later
        listed = await to_thread.run_sync(lambda: stream.answer_logprobs() or [])
        positions = listed_positions(stream.token_ids, parts.loaded.tokenizer)
        why = why_state(prompt.ids, stream.token_ids, listed, positions)
        yield ([{"role": "assistant", "content": stream.text}, _stats_message(stream)], inspector,
               *probability_outputs(visible(listed), stream.logprobs_note), new_id(), why)
        if not stream.text.strip():
            gr.Warning(f"The model returned an empty answer (stop: {stream.stop_reason}).")

    def show_alternatives(shown_entries: list[dict], evt: gr.SelectData) -> tuple[list[list[Any]], int | None]:
        """The alternatives of the token clicked in the probability view, and which token it is."""
        index = evt.index if isinstance(evt.index, int) else -1
        if 0 <= index < len(shown_entries or []):
            return alternative_rows(shown_entries[index]), index
        return [], None

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
                        max_new_tokens = gr.Slider(1, limits.max_new_tokens, value=256, step=1,
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
                picked_at = gr.State(None)  # the index of the token clicked in the probability view
                why = gr.State(None)  # the last answer's token ids, for "why this token" (why_state)
                answered = gr.State(None)  # a fresh id once an answer is complete: the conversation is then kept
                textbox = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, lines=1,
                                     max_lines=8, submit_btn=True, stop_btn=True, elem_id="chat-input", render=False)
                interface = gr.ChatInterface(
                    respond, chatbot=chatbot, textbox=textbox, editable=True, autofocus=False,
                    additional_inputs=[system_prompt, temperature, top_p, top_k, repetition_penalty, max_new_tokens,
                                       seed],
                    additional_outputs=[inspector, probs_view, probs_table, picked, entries, probs_note, answered,
                                        why],
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
                    build_why_this_token(host, entries, picked_at, why)
                with gr.Accordion("What the model receives", open=False):
                    inspector.render()
                    preview = gr.Button("Preview the prompt for the text in the box", size="sm")

        stopped = textbox.stop(mark_stopped, chatbot, chatbot, queue=False, api_visibility="private")
        wire_conversations(sidebar, ChatView(
            chatbot=chatbot, chat_state=interface.chatbot_state, system_prompt=system_prompt,
            settings=[temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed], inspector=inspector,
            probabilities=[probs_view, probs_table, picked, entries, probs_note], answered=answered, stopped=stopped,
            inspect=prompt_tokens, max_new_tokens_limit=limits.max_new_tokens))
        preview.click(ui_errors(prompt_tokens), [interface.textbox, chatbot, system_prompt, max_new_tokens],
                      inspector, api_visibility="private")
        probs_view.select(show_alternatives, entries, [picked, picked_at], queue=False, api_visibility="private")
        register_chat_api(host)
