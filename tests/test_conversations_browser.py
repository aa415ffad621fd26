"""Conversations kept in the browser, in a real one (Debian's Chromium through Playwright): a chat survives a reload
and a server restart on the same address, another browser sees none of it, export then import gives it back, and
hostile files, a full storage and two tabs change nothing they should not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.conftest
from core.chat.store import STORAGE_KEY
from tests.browser import LOAD_TIMEOUT_MS, BrowserPage
from tests.holds import cancelled, hold_pushes
from tests.servers import launched

pytestmark = pytest.mark.browser

# An answer on a CPU shared with other work: a bound for a hang, not a speed requirement.
ANSWER_TIMEOUT_MS = 300_000
TOOLS = "Rename, delete, export, import"
CONVERSATION = {"format": "token-lab/conversation", "version": 1, "title": "Trip to Kyoto",
                "system_prompt": "You are a travel guide.",
                "settings": {"temperature": 0.2, "top_p": 0.8, "top_k": 30, "repetition_penalty": 1.2,
                             "max_new_tokens": 40, "seed": 11},
                "messages": [{"role": "user", "content": "Where should I stay in Kyoto?"},
                             {"role": "assistant", "content": "Near Gion, to walk to the temples."}]}


def open_page(context: Any, url: str) -> BrowserPage:
    page = context.new_page()
    page.set_default_timeout(LOAD_TIMEOUT_MS)
    session = BrowserPage(page=page, url=url)
    page.on("dialog", lambda dialog: (session.dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda exc: session.page_errors.append(str(exc)))
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("[role=tab]")
    loaded(page)
    return session


def loaded(page: Any) -> None:
    """Wait until the page's first event (reading the kept conversations) has been answered."""
    page.wait_for_function("() => document.querySelector('#conv-list') !== null")
    page.wait_for_timeout(1500)


def stored(page: Any) -> str | None:
    return page.evaluate("key => localStorage.getItem(key)", STORAGE_KEY)


def titles(page: Any) -> list[str]:
    return [t.strip() for t in page.locator("#conv-list label").all_inner_texts()]


def status(page: Any) -> str:
    return page.locator("#conv-status textarea").input_value()


def wait_status(page: Any, text: str) -> None:
    page.wait_for_function("t => (document.querySelector('#conv-status textarea')?.value || '').includes(t)",
                           arg=text)


def wait_chat(page: Any, text: str, shown: bool = True) -> None:
    """Wait until the chat shows `text` (or, with `shown=False`, no longer does)."""
    page.wait_for_function("([t, shown]) => (document.querySelector('#chatbot')?.innerText || '')"
                           ".includes(t) === shown",
                           arg=[text, shown])


def wait_stored(page: Any, text: str) -> None:
    """Wait until the browser's storage holds `text`: it is written by a script after the handler answers."""
    page.wait_for_function("([key, t]) => (localStorage.getItem(key) || '').includes(t)", arg=[STORAGE_KEY, text])


def import_file(session: BrowserPage, path: Path) -> None:
    page = session.page
    if not page.locator("#conv-import").is_visible():
        session.open_accordion(TOOLS)
    with page.expect_file_chooser() as chooser:
        page.locator("#conv-import").click()
    chooser.value.set_files(str(path))


def imported(context: Any, app_url: str, path: Path) -> BrowserPage:
    """A new page that has imported the conversation in `path` (CONVERSATION's) and stored it."""
    session = open_page(context, app_url)
    import_file(session, path)
    wait_stored(session.page, CONVERSATION["title"])
    return session


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    yield context
    context.close()


@pytest.fixture
def kyoto(tmp_path: Path) -> Path:
    path = tmp_path / "kyoto.json"
    path.write_text(json.dumps(CONVERSATION), encoding="utf-8")
    return path


def test_a_chat_survives_a_reload_with_its_settings_stats_and_probabilities(context, app_url):
    session = open_page(context, app_url)
    page = session.page
    page.locator("#system-prompt textarea").fill("Answer in a few words.")
    session.open_accordion("Generation settings")
    for selector, value in (("#chat-temperature input[type=number]", "0"),
                            ("#chat-max-new-tokens input[type=number]", "24"), ("#chat-seed input", "7")):
        page.locator(selector).fill(value)
        page.locator(selector).press("Tab")
    box = page.locator("#chat-input textarea")
    box.fill("What is the capital of France?")
    box.press("Enter")
    page.wait_for_function("() => /stop: (end of turn|length)/.test(document.querySelector('#chatbot').innerText)",
                           timeout=ANSWER_TIMEOUT_MS)
    wait_stored(page, "capital of France")
    answer = page.locator("#chatbot [data-testid=bot]").first.inner_text()
    data = json.loads(stored(page))
    (kept,) = data["conversations"]
    assert kept["system_prompt"] == "Answer in a few words."
    assert kept["settings"] == {"temperature": 0.0, "top_p": 0.95, "top_k": 50, "repetition_penalty": 1.0,
                                "max_new_tokens": 24, "seed": 7}
    assert kept["messages"][1]["logprobs"], "the last answer keeps its tokens' probabilities"

    page.locator("#chat-max-new-tokens input[type=number]").fill("32")  # a setting changed after the answer
    page.locator("#chat-max-new-tokens input[type=number]").press("Tab")
    page.wait_for_function("key => JSON.parse(localStorage.getItem(key)).conversations"
                           ".some(c => c.settings.max_new_tokens === 32)", arg=STORAGE_KEY, timeout=ANSWER_TIMEOUT_MS)

    page.reload(wait_until="domcontentloaded")
    loaded(page)
    wait_chat(page, "stop:")
    chat = page.locator("#chatbot").inner_text()
    assert answer.strip()[:20] in chat and "stop:" in chat, "the answer and its stats line are back"
    assert titles(page) == ["What is the capital of France?"]
    assert page.locator("#system-prompt textarea").input_value() == "Answer in a few words."
    session.open_accordion("Generation settings")
    assert page.locator("#chat-max-new-tokens input[type=number]").input_value() == "32"
    assert page.locator("#chat-seed input").input_value() == "7"
    session.open_accordion("Answer tokens by probability")
    assert page.locator("#answer-probs .token, #answer-probs [data-testid=highlighted-text] span").count() > 0
    session.open_accordion("What the model receives")
    assert "capital" in page.locator("#prompt-inspector").inner_text()
    assert not session.page_errors and not session.dialogs


def test_another_browser_sees_none_of_them(browser, context, app_url, kyoto):
    imported(context, app_url, kyoto)
    other_context = browser.new_context()
    try:
        other = open_page(other_context, app_url)
        assert stored(other.page) is None
        assert titles(other.page) == [] and "Kyoto" not in other.page.locator("#chatbot").inner_text()
    finally:
        other_context.close()


def test_export_then_import_gives_the_same_conversation(browser, context, app_url, kyoto, tmp_path):
    session = open_page(context, app_url)
    page = session.page
    import_file(session, kyoto)
    wait_status(page, "Imported “Trip to Kyoto”")
    with page.expect_download() as download:
        page.locator("#conv-export").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "token-lab-trip-to-kyoto.json"
    exported = json.loads(saved.read_text(encoding="utf-8"))
    assert {k: exported[k] for k in ("title", "system_prompt", "settings", "messages")} == \
        {k: CONVERSATION[k] for k in ("title", "system_prompt", "settings", "messages")}

    fresh_context = browser.new_context()
    try:
        fresh = open_page(fresh_context, app_url)
        import_file(fresh, saved)
        wait_status(fresh.page, "Imported")
        assert titles(fresh.page) == ["Trip to Kyoto"]
        wait_chat(fresh.page, "Near Gion")
        assert fresh.page.locator("#system-prompt textarea").input_value() == "You are a travel guide."
        fresh.open_accordion("Generation settings")
        assert fresh.page.locator("#chat-max-new-tokens input[type=number]").input_value() == "40"
        assert fresh.page.locator("#chat-seed input").input_value() == "11"
        fresh.open_accordion("Answer tokens by probability")
        assert "not kept" in fresh.page.locator("#answer-probs-note textarea").input_value()
    finally:
        fresh_context.close()


def test_conversations_survive_a_server_restart_on_the_same_address(bundled_host, context, kyoto, monkeypatch):
    port = tests.conftest.free_port()
    monkeypatch.setattr(tests.conftest, "free_port", lambda: port)  # launched() asks for a port: the same one
    with launched(bundled_host) as url:
        session = open_page(context, url)
        import_file(session, kyoto)
        wait_stored(session.page, "Trip to Kyoto")
    with launched(bundled_host) as again:
        assert again == url
        session.page.reload(wait_until="domcontentloaded")
        loaded(session.page)
        wait_chat(session.page, "Near Gion")
        assert titles(session.page) == ["Trip to Kyoto"]


@pytest.mark.parametrize("name,content,sentence", [
    ("huge.json", b" " * 5_000_000, "5.0 MB"),
    ("page.json", b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>", "HTML or XML"),
    ("numbers.json", b"[1, 2, 3]", "not a message"),
    ("broken.json", b'{"messages": [', "not JSON"),
    ("hot.json", b'{"messages": [{"role": "user", "content": "a"}], "settings": {"temperature": 9}}',
     "temperature must be a number"),
])
def test_a_hostile_import_is_told_and_changes_nothing(context, app_url, kyoto, tmp_path, name, content, sentence):
    session = imported(context, app_url, kyoto)
    page = session.page
    before = stored(page)
    hostile = tmp_path / name
    hostile.write_bytes(content)
    import_file(session, hostile)
    wait_status(page, sentence)
    assert "Nothing was imported" in status(page)
    assert stored(page) == before and titles(page) == ["Trip to Kyoto"]
    assert not session.dialogs and not session.page_errors


def test_html_in_an_imported_conversation_is_shown_as_text(context, app_url, tmp_path):
    hostile = '<img src=x onerror="alert(1)"><script>alert(2)</script><b>bold</b>'
    path = tmp_path / "html.json"
    path.write_text(json.dumps({"title": hostile, "messages": [{"role": "user", "content": hostile},
                                                               {"role": "assistant", "content": hostile}]}))
    session = open_page(context, app_url)
    page = session.page
    import_file(session, path)
    wait_status(page, "Imported")
    wait_chat(page, "bold")
    assert titles(page) == [hostile]
    assert page.locator("#conv-list img, #conv-list script, #conv-list b, #chatbot img[src=x], #chatbot script, "
                        "#chatbot b").count() == 0
    assert hostile in page.locator("#chatbot").inner_text().replace("\u200b", "")  # zero-width spaces break tags up
    assert not session.dialogs and not session.page_errors


def test_a_full_storage_is_told_and_leaves_what_was_kept(context, app_url, kyoto):
    session = imported(context, app_url, kyoto)
    page = session.page
    before = stored(page)
    page.evaluate("() => { Storage.prototype.setItem = function () { "
                  "throw new DOMException('quota', 'QuotaExceededError'); }; }")
    page.locator("#conv-title input, #conv-title textarea").first.fill("Renamed")
    page.locator("#conv-rename").click()
    wait_status(page, "storage for this site is full (QuotaExceededError)")
    assert stored(page) == before


def test_two_tabs_keep_both_lists_and_the_list_can_be_managed(context, app_url, kyoto, tmp_path):
    tab_a = open_page(context, app_url)
    tab_b = open_page(context, app_url)  # loaded before tab A imports anything
    import_file(tab_a, kyoto)
    wait_stored(tab_a.page, "Trip to Kyoto")
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"role": "user", "content": "Plan a day in Osaka"}]))
    import_file(tab_b, other)
    wait_stored(tab_b.page, "Osaka")
    page = tab_b.page
    assert titles(page) == ["Plan a day in Osaka", "Trip to Kyoto"], "tab B's import kept tab A's conversation"
    assert len(json.loads(stored(page))["conversations"]) == 2

    page.locator("#conv-list label", has_text="Trip to Kyoto").click()
    wait_chat(page, "Near Gion")
    assert page.locator("#system-prompt textarea").input_value() == "You are a travel guide."
    page.locator("#conv-title input, #conv-title textarea").first.fill("Kyoto, autumn")
    page.locator("#conv-rename").click()
    wait_status(page, "Renamed")
    assert "Kyoto, autumn" in titles(page)
    page.locator("#conv-delete").click()
    wait_status(page, "Deleted.")
    wait_chat(page, "Near Gion", shown=False)
    assert titles(page) == ["Plan a day in Osaka"]
    page.locator("#conv-new").click()
    page.locator("#conv-delete-all").click()
    page.locator("#conv-delete-all-confirm").click()
    wait_status(page, "Deleted every conversation")
    assert titles(page) == [] and json.loads(stored(page))["conversations"] == []
    assert not tab_a.page_errors and not tab_b.page_errors


def test_clear_starts_a_new_conversation_and_keeps_the_old_one(context, app_url, kyoto):
    session = imported(context, app_url, kyoto)
    page = session.page
    wait_chat(page, "Near Gion")
    before = json.loads(stored(page))["conversations"][0]
    page.locator("#chatbot button[aria-label='Clear']").first.click()
    wait_chat(page, "Near Gion", shown=False)
    page.wait_for_function("() => !document.querySelector('#conv-list input:checked')")
    session.open_accordion("Generation settings")
    page.locator("#chat-max-new-tokens input[type=number]").fill("8")
    page.locator("#chat-max-new-tokens input[type=number]").press("Tab")
    box = page.locator("#chat-input textarea")
    box.fill("Say hello.")
    box.press("Enter")
    wait_stored(page, "Say hello.")
    kept = json.loads(stored(page))["conversations"]
    assert [c["title"] for c in kept] == ["Say hello.", "Trip to Kyoto"]
    assert kept[1] == before, "the cleared conversation is kept as it was"
    assert not session.page_errors


def test_a_stopped_answer_is_kept(context, app_url, monkeypatch):
    """The engine's worker is held at the answer's 6th token until Stop cancels it (tests/holds.py), so Stop always
    comes while the answer is being generated; what was shown, stopped, is what is kept."""
    hold_pushes(monkeypatch, lambda stream: "lighthouse" in stream.prompt.text, after=6, until=cancelled)
    session = open_page(context, app_url)
    page = session.page
    box = page.locator("#chat-input textarea")
    box.fill("Write a long story about a lighthouse keeper.")
    box.press("Enter")
    page.wait_for_function("() => (document.querySelector('#chatbot [data-testid=bot]')?.innerText || '').length > 5")
    page.locator("#chat-input button.stop-button").click()
    wait_chat(page, "stop: stopped")
    wait_stored(page, "stop: stopped")
    (kept,) = json.loads(stored(page))["conversations"]
    assert kept["messages"][0]["content"] == "Write a long story about a lighthouse keeper."
    assert kept["messages"][1]["content"] and "stop: stopped" in kept["messages"][1]["stats"]
