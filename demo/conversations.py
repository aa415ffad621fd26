"""The Chat tab's list of conversations: kept in the person's own browser (localStorage), never on the server; new,
switch, rename, delete, delete all, export and import. Layout and wiring only: what is stored, merged, bounded,
exported and imported is core/chat's.

Not gr.BrowserState: it encrypts with a secret that is new at every server start unless fixed (a restart would lose
every conversation), it writes the tab's own copy (two tabs would undo each other) and it drops a write the browser
refuses with nothing but a console line. Instead each change reads the text the browser holds at that moment (a
small script before the handler), core applies the change to it, and a script after writes the whole new text at
once, or says plainly that the browser's storage is full and leaves what was there. Exports are made in the page
from that text: no file with a person's conversations is left on the server; an imported file is deleted as soon
as it has been read.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
from anyio import to_thread

from core.chat import store as kept
from core.chat.conversation import ChatSettings, Conversation, Version, chat_messages, messages_from_chat, new_id
from core.chat.transfer import check_import_size, export_all, export_one, read_import
from core.errors import InvalidInputError, TokenLabError
from demo.answer_probs import probability_outputs
from demo.errors import message_for

NO_PROBABILITIES = ("This answer's token probabilities were not kept: a conversation keeps them for its last answer "
                    "only, and exported files keep none.")
FULL = ("This browser's storage for this site is full ({name}), so nothing was saved and what was kept before is "
        "unchanged. Delete or export older conversations, or free space for this site in the browser's settings.")
KEY = json.dumps(kept.STORAGE_KEY)
WRITE_JS = ("(text, status) => { if (!text) return [status, '']; try { localStorage.setItem(" + KEY + ", text); "
            "return [status, '']; } catch (e) { return [" + json.dumps(FULL) + ".replace('{name}', e.name), '']; } }")
DOWNLOAD_JS = """(payload) => {
    if (!payload) return [];
    const [name, text] = JSON.parse(payload);
    const url = URL.createObjectURL(new Blob([text], {type: "application/json"}));
    const link = document.createElement("a");
    link.href = url;
    link.download = name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    return [];
}"""


def read_js(inputs: int) -> str:
    """A script run before a handler: its first input becomes the text the browser holds now."""
    return ("(...args) => { let text = ''; try { text = localStorage.getItem(" + KEY + ") || ''; } catch (e) {} "
            f"return [text, ...args.slice(1, {inputs})]; }}")


@dataclass
class ChatView:
    """The Chat tab's components a conversation is restored into, and how to show the prompt of its last turn."""

    chatbot: gr.Chatbot
    chat_state: gr.State  # gr.ChatInterface's own copy of the history, sent with the next message
    system_prompt: gr.Textbox
    settings: list[gr.components.Component]  # in ChatSettings' field order
    inspector: gr.HighlightedText
    answered: gr.State  # set by the chat once an answer is complete
    stopped: Any  # the Stop event: the stopped answer is kept too
    probabilities: list[gr.components.Component]  # view, table, picked, entries, note (probability_outputs' order)
    inspect: Callable[[str, list[dict[str, str]], str, int], list]  # prompt tokens of (message, history, ...)
    max_new_tokens_limit: int


@dataclass
class Sidebar:
    """The list and its buttons; the hidden boxes carry the stored text between the page and the handlers."""

    new: gr.Button
    listing: gr.Radio
    title: gr.Textbox
    rename: gr.Button
    delete: gr.Button
    delete_all: gr.Button
    confirm: gr.Button
    export: gr.Button
    export_all: gr.Button
    upload: gr.UploadButton
    status: gr.Textbox
    stored: gr.Textbox
    to_write: gr.Textbox
    download: gr.Textbox
    loaded: gr.State
    pending: gr.State  # {"n": a fresh id, "conversation": a stored conversation or None}: set to show it


def conversation_sidebar() -> Sidebar:
    """The sidebar's layout, in the column it is called in."""
    gr.Markdown("**Conversations**, kept in this browser only (not on the server): export them to keep a copy.")
    new = gr.Button("New chat", size="sm", elem_id="conv-new")
    listing = gr.Radio(choices=[], value=None, show_label=False, elem_id="conv-list", container=False)
    with gr.Accordion("Rename, delete, export, import", open=False, elem_id="conv-tools"):
        title = gr.Textbox(label="Title", max_lines=1, elem_id="conv-title")
        rename = gr.Button("Rename", size="sm", elem_id="conv-rename")
        with gr.Row():
            export = gr.Button("Export", size="sm", elem_id="conv-export")
            export_all = gr.Button("Export all", size="sm", elem_id="conv-export-all")
        upload = gr.UploadButton("Import a file", size="sm", type="filepath", elem_id="conv-import")
        with gr.Row():
            delete = gr.Button("Delete", size="sm", variant="stop", elem_id="conv-delete")
            delete_all = gr.Button("Delete all", size="sm", elem_id="conv-delete-all")
        confirm = gr.Button("Yes, delete every conversation", size="sm", variant="stop", visible=False,
                            elem_id="conv-delete-all-confirm")
    status = gr.Textbox(show_label=False, interactive=False, container=False, lines=1, max_lines=6,
                        placeholder="", elem_id="conv-status")
    hidden = {"visible": False, "max_lines": 1}
    return Sidebar(new, listing, title, rename, delete, delete_all, confirm, export, export_all, upload, status,
                   gr.Textbox(**hidden), gr.Textbox(**hidden), gr.Textbox(**hidden), gr.State(None), gr.State(None))


def _settings(values: tuple[Any, ...]) -> ChatSettings:
    return ChatSettings.checked(dict(zip(ChatSettings().as_dict(), values, strict=True)), "settings")


def _choices(store: kept.Store) -> list[tuple[str, str]]:
    return [(c.title, c.id) for c in store.newest_first()]


def _skipped(store: kept.Store) -> str:
    if not store.skipped:
        return ""
    return (f"{len(store.skipped)} kept conversation(s) could not be read and were left out: {store.skipped[0]}")


def wire_conversations(side: Sidebar, view: ChatView) -> None:
    """Every event of the list, each a script reading the browser's text, a handler, and a script writing."""
    # The list's handlers never output to the chat itself: a handler that left the chatbot out (a refusal, nothing to
    # restore) would send gradio's "no change" update, which rebuilds the session's chatbot from its constructor and
    # loses the inert Markdown of safe_chatbot. They set `pending`, and its change shows the conversation.
    restored = [side.to_write, side.status, side.listing, side.title, side.loaded, side.pending]
    chat_outputs = [view.chatbot, view.chat_state, view.system_prompt, *view.settings, view.inspector,
                    *view.probabilities]

    def listed(store: kept.Store, current: Conversation | None) -> dict[Any, Any]:
        return {side.listing: gr.Radio(choices=_choices(store), value=current.id if current else None),
                side.title: current.title if current else "",
                side.loaded: current.version() if current else None}

    def prompt_view(conversation: Conversation) -> list:
        messages = conversation.messages
        last_user = next((i for i in reversed(range(len(messages))) if messages[i]["role"] == "user"), None)
        if last_user is None:
            return []
        history = [{"role": m["role"], "content": m["content"]} for m in messages[:last_user]]
        try:
            return view.inspect(messages[last_user]["content"], history, conversation.system_prompt,
                                min(conversation.settings.max_new_tokens, view.max_new_tokens_limit))
        except TokenLabError:
            return []  # the model is still loading, or the prompt no longer fits: the inspector stays empty

    async def shown(store: kept.Store, current: Conversation | None, note: str, text: str = "") -> dict[Any, Any]:
        """The list with `current` chosen (None: a new, empty chat), and `current` set to be shown."""
        return listed(store, current) | {side.status: note, side.to_write: text,
                                         side.pending: {"n": new_id(), "conversation": current and current.as_stored()}}

    async def show(pending: dict | None) -> list[Any]:
        """The chat, its settings, the prompt of its last turn and the probabilities of its last answer."""
        stored = (pending or {}).get("conversation")
        if stored is None:  # a new chat keeps the system prompt and settings the person has set
            return [[], [], gr.skip(), *[gr.skip()] * len(view.settings), [], *probability_outputs([], "")]
        current = Conversation.from_stored(stored, "the conversation")
        values = [*current.settings.as_dict().values()]
        values[4] = min(current.settings.max_new_tokens, view.max_new_tokens_limit)
        entries = current.answer_logprobs()
        answered = any(m["role"] == "assistant" for m in current.messages)
        shown_chat = chat_messages(current.messages)
        inspector = await to_thread.run_sync(lambda: prompt_view(current))
        return [shown_chat, shown_chat, current.system_prompt, *values, inspector,
                *probability_outputs(entries or [], NO_PROBABILITIES if answered and entries is None else "")]

    side.pending.change(show, side.pending, chat_outputs, concurrency_limit=None, api_visibility="private",
                        show_progress="hidden")

    def told(outputs: list[Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A handler whose refusal becomes the status sentence, leaving nothing to write or download."""
        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def handler(*args: Any) -> dict[Any, Any]:
                try:
                    return await fn(*args)
                except Exception as exc:  # every failure is told as a sentence; nothing is written or downloaded
                    carriers = [o for o in outputs if o is side.to_write or o is side.download]
                    return {side.status: message_for(exc)} | dict.fromkeys(carriers, "")
            return handler
        return wrap

    def on(trigger: Any, fn: Callable[..., Any], inputs: list[Any], outputs: list[Any]) -> Any:
        """`fn` with the browser's text as its first input, then the write of what it returns."""
        # queued (gradio tells the page of State changes, which show the chat, only for queued events); light work,
        # so never waiting for other people's
        return trigger(told(outputs)(fn), inputs, outputs, js=read_js(len(inputs)), concurrency_limit=None,
                       api_visibility="private", show_progress="hidden").then(
            None, [side.to_write, side.status], [side.status, side.to_write], js=WRITE_JS, queue=False,
            api_visibility="private", show_progress="hidden")

    saving = [side.to_write, side.loaded, side.listing, side.title, side.status]

    async def save(text: str, loaded: Version | None, history: list, system_prompt: str, *rest: Any) -> dict:
        *values, entries = rest
        store = kept.read_store(text)
        saved = kept.save(store, messages_from_chat(history, entries), system_prompt or "", _settings(tuple(values)),
                          loaded, kept.now_ms())
        return listed(saved.store, saved.current) | {side.to_write: saved.text,
                                                      side.status: saved.note or _skipped(store)}

    save_inputs = [side.stored, side.loaded, view.chatbot, view.system_prompt, *view.settings, view.probabilities[3]]
    on(view.answered.change, save, save_inputs, saving)
    on(view.stopped.then, save, save_inputs, saving)
    # a setting changed between two answers is kept with the conversation (an empty chat keeps nothing)
    for control in (view.system_prompt, *view.settings):
        on(control.input if isinstance(control, gr.Slider) else control.blur, save, save_inputs, saving)

    async def restore(text: str) -> dict:
        store = kept.read_store(text)
        if store.newest() is None:  # nothing to restore: leave the chat alone (a message may already be on its way)
            return listed(store, None) | {side.status: _skipped(store), side.to_write: ""}
        return await shown(store, store.newest(), _skipped(store))

    def on_load(*args: Any, **kwargs: Any) -> Any:
        return gr.on(None, *args, **kwargs)

    on(on_load, restore, [side.stored], restored)

    async def switch(text: str, chosen: str | None) -> dict:
        store = kept.read_store(text)
        current = store.conversations.get(chosen or "")
        return await shown(store, current, "" if current else "That conversation was deleted in another tab.")

    on(side.listing.input, switch, [side.stored, side.listing], restored)

    async def new_chat(text: str) -> dict:
        return await shown(kept.read_store(text), None, "")

    on(side.new.click, new_chat, [side.stored], restored)
    on(view.chatbot.clear, new_chat, [side.stored], restored)  # the chat's own Clear starts a new one too

    async def rename(text: str, loaded: Version | None, title: str) -> dict:
        if loaded is None:
            raise InvalidInputError("There is nothing to rename yet: a conversation is kept once it has a message.")
        saved = kept.rename(kept.read_store(text), loaded.id, title, kept.now_ms())
        return listed(saved.store, saved.current) | {side.to_write: saved.text, side.status: "Renamed."}

    for trigger in (side.rename.click, side.title.submit):
        on(trigger, rename, [side.stored, side.loaded, side.title], saving)

    async def delete(text: str, loaded: Version | None) -> dict:
        if loaded is None:
            return await shown(kept.read_store(text), None, "")
        saved = kept.delete(kept.read_store(text), loaded.id, kept.now_ms())
        return await shown(saved.store, None, "Deleted.", saved.text)

    on(side.delete.click, delete, [side.stored, side.loaded], restored)
    side.delete_all.click(lambda: gr.Button(visible=True), None, side.confirm, queue=False, api_visibility="private")

    async def delete_all(text: str) -> dict:
        saved = kept.delete_all(text, kept.now_ms())
        return await shown(saved.store, None, "Deleted every conversation kept in this browser.", saved.text) | {
            side.confirm: gr.Button(visible=False)}

    on(side.confirm.click, delete_all, [side.stored], [*restored, side.confirm])

    async def export(text: str, loaded: Version | None) -> dict:
        current = kept.read_store(text).conversations.get(loaded.id) if loaded else None
        if current is None:
            raise InvalidInputError("There is nothing to export yet: a conversation is kept once it has a message.")
        return {side.download: json.dumps(export_one(current)), side.status: f"Exported “{current.title}”."}

    async def export_every(text: str) -> dict:
        store = kept.read_store(text)
        if not store.conversations:
            raise InvalidInputError("There are no kept conversations to export.")
        return {side.download: json.dumps(export_all(store)),
                side.status: f"Exported {len(store.conversations)} conversation(s)."}

    for trigger, fn, inputs in ((side.export.click, export, [side.stored, side.loaded]),
                                (side.export_all.click, export_every, [side.stored])):
        trigger(told([side.download])(fn), inputs, [side.download, side.status], js=read_js(len(inputs)), queue=False,
                api_visibility="private", show_progress="hidden").then(
            None, side.download, None, js=DOWNLOAD_JS, queue=False, api_visibility="private")

    async def import_file(text: str, path: str | None) -> dict:
        if not path:
            raise InvalidInputError("Choose a file to import.")
        try:
            check_import_size(os.path.getsize(path))
            raw = await to_thread.run_sync(lambda: _read(path))
        finally:
            _remove(path)  # a person's conversations are not left on the server
        now = kept.now_ms()
        conversations = read_import(raw, now)
        saved = kept.add(kept.read_store(text), conversations, now)
        note = (f"Imported {len(conversations)} conversation(s)." if len(conversations) > 1
                else f"Imported “{conversations[0].title}”.")
        return await shown(saved.store, saved.current, note, saved.text)

    on(side.upload.upload, import_file, [side.stored, side.upload], restored)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
