"""The Tokens tab in a real browser: hostile text shows literally and never runs; byte tokens show whole characters;
the one-click comparison and the chat template view work."""

from __future__ import annotations

import pytest

from demo.tokens_tab import SEED_SAMPLE

pytestmark = pytest.mark.browser

IMG = "<img src=x onerror=window.__pwned=1>"
SCRIPT = "<script>window.__pwned=2</script>"
TOKEN_TEXTS = "sel => [...document.querySelectorAll(sel + ' .token .text')].map(e => e.textContent)"


def token_texts(page, view: str = "#tokens-view") -> list[str]:
    return page.evaluate(TOKEN_TEXTS, view)


def wait_for_view(page, needle: str, view: str = "#tokens-view") -> None:
    page.wait_for_function(
        "([sel, needle]) => [...document.querySelectorAll(sel + ' .token .text')].map(e => e.textContent)"
        ".join('').replaceAll('␣', ' ').includes(needle)", arg=[view, needle])


def assert_nothing_ran(browser_page) -> None:
    page = browser_page.page
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert not browser_page.dialogs
    assert not browser_page.page_errors
    assert page.locator("#tokens-view img, #tokens-view script, #tokens-table img, #detok-view img").count() == 0


def test_html_and_script_show_as_text(browser_page) -> None:
    page = browser_page.page
    browser_page.open_tab("Tokens")
    box = page.locator("#tokens-text textarea")
    box.fill("")
    box.press_sequentially(IMG, delay=5)
    wait_for_view(page, IMG)
    box.fill(f"{IMG} {SCRIPT}\u202e\u200d\x00 end")
    wait_for_view(page, f"{IMG} {SCRIPT}")
    shown = "".join(token_texts(page)).replace("␣", " ")
    assert shown == f"{IMG} {SCRIPT}⟨RLO⟩⟨ZWJ⟩␀ end"
    table = page.locator("#tokens-table").inner_text()
    assert "script" in table and "img" in table
    assert_nothing_ran(browser_page)


def test_bad_ids_error_is_literal(browser_page) -> None:
    page = browser_page.page
    browser_page.open_tab("Tokens")
    browser_page.open_accordion("Ids → text")
    page.locator("#detok-ids textarea").fill("57, <img src=x onerror=window.__pwned=3>, 99999999")
    page.get_by_role("button", name="Decode", exact=True).click()
    toast = page.locator("[data-testid=toast-body]").first
    toast.wait_for()
    message = toast.inner_text()
    assert "'<img', 'src=x', 'onerror=window.__pwn…'" in message  # escaped, so shown literally
    assert "99999999" in message
    assert_nothing_ran(browser_page)


def test_byte_tokens_show_whole_characters(browser_page) -> None:
    page = browser_page.page
    browser_page.open_tab("Tokens")
    page.locator("#tokens-text textarea").fill("🎵 鸟")
    page.wait_for_function("() => /6 tokens/.test(document.querySelector('#tokens-counts')?.innerText || '')")
    assert token_texts(page) == ["🎵", "␣鸟"]  # SmolLM2: 3 byte tokens each; the second carries the space
    table = page.locator("#tokens-table").inner_text()
    for piece in ("ðŁ", "İ", "µ", "Ġé", "¸", "Ł"):  # every byte token is listed
        assert piece in table


def test_compare_seed_sample_and_chat_template(browser_page) -> None:
    page = browser_page.page
    browser_page.open_tab("Tokens")
    browser_page.open_accordion("Compare tokenizers")
    page.locator("#compare-seed").click()
    page.wait_for_function("() => /BERT WordPiece/.test(document.querySelector('#compare-summary')?.innerText || '')")
    assert page.locator("#tokens-text textarea").input_value() == SEED_SAMPLE
    summary = page.locator("#compare-summary").inner_text()
    assert "Loaded model: SmolLM2" in summary and "SmolLM2-135M (bundled)" in summary

    browser_page.open_accordion("Chat template")
    page.get_by_role("button", name="Show as tokens").click()
    wait_for_view(page, "<|im_start|>user", "#template-view")
    texts = token_texts(page, "#template-view")
    assert texts.count("<|im_start|>") == 5  # system, user, assistant, user, and the generation prompt
    assert_nothing_ran(browser_page)
