"""Chat Markdown shown inert: images and raw HTML outside code lose their power, code is untouched, and the text
handed back to the model is exactly what was written."""

from __future__ import annotations

import pytest

from demo.chat_markdown import ZWSP, inert, restore, safe_chatbot

TEXTS = [
    "plain text, nothing to do",
    "a < b and b > c, 3<4",
    "![cat](http://x/c.png) and <img src=http://x/i.png> and <b>bold</b> and <!-- c --> and </p>",
    "```html\n<img src=x>\n```\nafter <img src=y>",
    "~~~\n<b>\n~~~~\n<b>",
    "x ``<b>`` y <i> `a<b` z",
    "`a\n\n<img src=z>\n\n`",
    "![a](b) !![c](d) \\![e](f) ![r][ref]\n\n[ref]: http://x/r.png",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_the_round_trip_is_exact(text):
    assert restore(inert(text)) == text


def test_images_and_tags_outside_code_are_broken_up():
    shown = inert("![cat](http://x/c.png) <img src=y> <b>b</b> <!-- c -->")
    assert "![" not in shown and "<img" not in shown and "<b>" not in shown and "<!--" not in shown
    assert shown.count(ZWSP) == 5


def test_code_is_left_alone():
    fenced = "```html\n<img src=x>\n```\n"
    assert inert(fenced) == fenced
    assert inert("use `List<String>` here") == "use `List<String>` here"
    # a code span cannot cross a blank line: what follows one is prose again
    assert "<img" not in inert("`a\n\n<img src=z>\n\n`")


def test_the_chatbot_shows_inert_text_and_hands_back_the_original():
    chatbot = safe_chatbot()
    original = "see ![x](http://h/x.png) <b>hi</b>"
    shown = chatbot.postprocess([{"role": "assistant", "content": original}])
    text = shown.root[0].content[0].text
    assert text == inert(original) and text != original
    back = chatbot.preprocess(shown)
    assert back[0]["content"][0]["text"] == original
