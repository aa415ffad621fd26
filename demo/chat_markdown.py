"""Chat messages shown as Markdown without remote images or raw HTML.

A model answer (or a pasted text) with `![x](http://host/x.png)` or `<img src=…>` would make the reader's browser
fetch that address: the known way a prompt-injected model leaks a conversation through image URLs. The page's
Content-Security-Policy (demo/security.py) already stops such requests; here the chat also stops *asking* for them.
Outside code, a zero-width space goes between `!` and `[` (an image becomes "!" and a link, its URL one click away)
and after a `<` that would open a tag (raw HTML shows as text). Code blocks and code spans are left alone, so code
copies cleanly. The change is undone on the way back, so the model's history holds the text as it was written:

    >>> inert("see ![cat](http://x/c.png) and <b>this</b>, `a<b`")
    'see !\\u200b[cat](http://x/c.png) and <\\u200bb>this<\\u200b/b>, `a<b`'
    >>> restore(inert("see ![cat](u) <b>"))
    'see ![cat](u) <b>'
"""

from __future__ import annotations

import re
from typing import Any

import gradio as gr
from gradio.components.chatbot import TextMessage

ZWSP = "\u200b"
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ACTIVE = re.compile(r"!(?=\[)|<(?=[A-Za-z/!?])")  # an image's "![", or a "<" that opens a tag or comment
_INERT = re.compile(f"(?<=!){ZWSP}(?=\\[)|(?<=<){ZWSP}(?=[A-Za-z/!?])")
_BACKTICKS = re.compile(r"(?<!\\)(`+)")


def _code_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each inline code span: a run of backticks up to the next run of the same length, within one
    paragraph (a blank line ends a span's chance)."""
    spans, pos = [], 0
    while True:
        opening = _BACKTICKS.search(text, pos)
        if opening is None:
            return spans
        run = opening.group(1)
        closing = re.compile(f"(?<!`){run}(?!`)").search(text, opening.end())
        body_end = closing.start() if closing else -1
        if closing is None or re.search(r"\n[ \t]*\n", text[opening.end():body_end]):
            pos = opening.end()
            continue
        spans.append((opening.start(), closing.end()))
        pos = closing.end()


def _inert_prose(text: str) -> str:
    out, pos = [], 0
    for start, end in _code_spans(text):
        out.append(_ACTIVE.sub(lambda m: m.group() + ZWSP, text[pos:start]))
        out.append(text[start:end])
        pos = end
    out.append(_ACTIVE.sub(lambda m: m.group() + ZWSP, text[pos:]))
    return "".join(out)


def inert(text: str) -> str:
    """`text` with images and raw HTML made inert outside fenced code blocks and code spans."""
    if "<" not in text and "![" not in text:
        return text
    out: list[str] = []
    prose: list[str] = []
    fence = ""
    for line in text.splitlines(keepends=True):
        match = _FENCE.match(line)
        if fence:
            out.append(line)
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                    and not line[match.end():].strip():
                fence = ""
        elif match and not (match.group(1)[0] == "`" and "`" in line[match.end():]):
            out.append(_inert_prose("".join(prose)))
            prose = []
            out.append(line)
            fence = match.group(1)
        else:
            prose.append(line)
    out.append(_inert_prose("".join(prose)))
    return "".join(out)


def restore(text: str) -> str:
    """Undo `inert`: the text as it was written."""
    return _INERT.sub("", text) if ZWSP in text else text


def safe_chatbot(**kwargs: Any) -> gr.Chatbot:
    """A gr.Chatbot whose text messages are shown inert (see `inert`) and reach handlers restored. Its public
    postprocess/preprocess are wrapped on the instance: a subclass would make gradio write a .pyi stub beside this
    file at import."""
    chatbot = gr.Chatbot(**kwargs)
    postprocess, preprocess = chatbot.postprocess, chatbot.preprocess

    def shown(value: Any) -> Any:
        data = postprocess(value)
        for message in data.root:
            for part in message.content:
                if isinstance(part, TextMessage):
                    part.text = inert(part.text)
        return data

    def received(payload: Any) -> Any:
        messages = preprocess(payload)
        for message in messages:
            for part in message["content"]:
                if isinstance(part, dict) and part.get("type") == "text":
                    part["text"] = restore(part["text"])
        return messages

    chatbot.postprocess, chatbot.preprocess = shown, received  # type: ignore[method-assign]
    return chatbot
