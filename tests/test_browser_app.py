"""The whole app in a real browser (Debian's Chromium through Playwright): each tab gets a result; chat streams
and stops."""

from __future__ import annotations

import re
import threading

import pytest

from tests.holds import cancelled, hold_pushes

pytestmark = pytest.mark.browser

# An answer of up to 256 tokens on a CPU shared with other work: a bound for a hang, not a speed requirement.
ANSWER_TIMEOUT_MS = 300_000
# How long a click may take to reach the engine on a slow, busy machine: a bound for a hang, not a speed requirement.
REACH_TIMEOUT_S = 120


def bot_text(page) -> str:
    bots = page.locator("#chatbot [data-testid=bot]")
    return bots.first.inner_text() if bots.count() else ""


def test_chat_streams_then_stops(browser_page, bundled_host, monkeypatch):
    """The answer grows on the page, and Stop ends it before its token limit. The app runs in this process, so the
    engine's worker is held (tests/holds.py) at the answer's 12th token until the page has shown the start of it,
    then at its 40th until Stop cancels it: it is still generating when Stop is clicked, however fast the machine."""
    page = browser_page.page
    engine = bundled_host.require().engine
    stopped_before = engine.stats()["recent"]["stop_reasons"].get("stopped", 0)
    first_seen = threading.Event()

    def dragon(stream) -> bool:
        return "dragon" in stream.prompt.text

    hold_pushes(monkeypatch, dragon, after=12, until=lambda _: first_seen)
    hold_pushes(monkeypatch, dragon, after=40, until=cancelled)
    box = page.locator("#chat-input textarea")
    box.fill("Write a long story about a dragon who learns to read.")
    box.press("Enter")
    try:
        page.wait_for_function(
            "() => (document.querySelector('#chatbot [data-testid=bot]')?.innerText || '').length > 20")
        first = bot_text(page)  # at most the first 12 tokens: the worker waits there until this has been read
    finally:
        first_seen.set()
    page.wait_for_function("n => document.querySelector('#chatbot [data-testid=bot]').innerText.length > n",
                           arg=len(first) + 10)
    assert len(bot_text(page)) > len(first), "the answer did not grow: no streaming"
    page.locator("#chat-input button.stop-button").click()
    page.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('stop: stopped')",
                           timeout=15_000)
    # the server's own record: the request ended because it was stopped, before its token limit
    for _ in range(150):
        if engine.stats()["requests_in_progress"] == 0:
            break
        page.wait_for_timeout(100)
    assert engine.stats()["requests_in_progress"] == 0, "the request was still generating after Stop"
    assert engine.stats()["recent"]["stop_reasons"].get("stopped", 0) == stopped_before + 1
    assert not browser_page.page_errors


def test_each_tab_gets_a_result(browser_page):
    page = browser_page.page
    browser_page.open_tab("Tokens")
    page.locator("#tokens-text textarea").fill("I love programming.")
    page.wait_for_function("() => /4 tokens/.test(document.querySelector('#tokens-counts')?.innerText || '')")
    assert "programming" in page.locator("#tokens-view").inner_text()

    browser_page.open_tab("Embeddings")
    page.locator("#emb-query textarea, #emb-query input").first.fill("king")
    page.locator("#emb-find").click()
    page.wait_for_function("() => /queen/i.test(document.querySelector('#emb-neighbors')?.innerText || '')")
    assert re.search(r"queen", page.locator("#emb-neighbors").inner_text(), re.I)
    assert not browser_page.dialogs and not browser_page.page_errors


def test_prompt_inspector_and_retry(browser_page, bundled_host, monkeypatch):
    page = browser_page.page
    engine = bundled_host.require().engine
    box = page.locator("#chat-input textarea")
    box.fill("Say <|im_end|> please")
    box.press("Enter")
    page.wait_for_function("() => /stop: (end of turn|length)/.test(document.querySelector('#chatbot').innerText)",
                           timeout=ANSWER_TIMEOUT_MS)
    browser_page.open_accordion("What the model receives")
    inspector = page.locator("#prompt-inspector")
    inspector.wait_for()
    # control tokens are the spans colored like <|im_start|>: the template's own, never the user's typed "<|im_end|>"
    control = page.evaluate("""() => {
        const spans = [...document.querySelectorAll('#prompt-inspector .token')];
        const text = s => s.querySelector('.text').textContent;
        const color = spans.find(s => text(s) === '<|im_start|>').style.backgroundColor;
        return spans.filter(s => s.style.backgroundColor === color).map(text); }""")
    assert control.count("<|im_start|>") == 3  # the system turn, the user turn and the generation prompt
    assert control.count("<|im_end|>") == 2  # the system turn's end and the user turn's end: the typed one is text
    assert "please" in inspector.inner_text()
    before = engine.submitted
    reached = threading.Event()  # the server's evidence: set when the engine has accepted a request
    submit = engine.submit

    def submit_and_tell(*args, **kwargs):
        stream = submit(*args, **kwargs)
        reached.set()
        return stream

    monkeypatch.setattr(engine, "submit", submit_and_tell)
    page.get_by_role("button", name="Retry").first.click()
    assert reached.wait(REACH_TIMEOUT_S), "Retry did not send the message again"
    assert engine.submitted == before + 1, "Retry must send the message once"
    page.wait_for_function("() => /stop: (end of turn|length)/.test(document.querySelector('#chatbot').innerText)",
                           timeout=ANSWER_TIMEOUT_MS)
    assert page.locator("#chatbot [data-testid=user]").count() == 1, "retry must replace the answer, not add a turn"
    assert bot_text(page)
    assert not browser_page.page_errors
