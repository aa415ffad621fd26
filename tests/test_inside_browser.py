"""The Inside tab's views and Chat's answer probabilities (and "why this token") in a real browser (Debian's Chromium
through Playwright), on the bundled model."""

from __future__ import annotations

import threading

import pytest

import demo.inside_tab
from demo.attention_view import CELL, GAP, MARGIN
from tests.holds import HOLD_S

pytestmark = pytest.mark.browser
WAIT_MS = 120_000  # a view waits its turn on the model's worker; the machine may be busy


def wait_for_text(page, selector: str, needle: str) -> None:
    """Until the element (or, for a text box, its textarea's value) contains `needle`."""
    page.wait_for_function("([sel, needle]) => { const el = document.querySelector(sel); const box = "
                           "el?.querySelector('textarea'); return ((box ? box.value : el?.innerText) || '')"
                           ".includes(needle); }", arg=[selector, needle], timeout=WAIT_MS)


def rows_of(page, selector: str) -> list[list[str]]:
    """The cells of a Dataframe's body rows, as text (the grid's rows; its header cells are not grid cells)."""
    rows = page.locator(selector).evaluate(
        "el => [...el.querySelectorAll('[role=row]')].map(row => [...row.querySelectorAll('[role=gridcell]')]"
        ".map(cell => cell.innerText.trim()))")
    return [row for row in rows if row]


def set_temperature(browser_page, scope: str, value: str) -> None:
    """Type into the temperature slider's number box inside `scope` until the slider holds it (typing again if
    Gradio's first render of the slider put its configured value back: see BrowserPage.settle)."""
    page = browser_page.page
    box = page.locator(scope).get_by_label("number input for Temperature (0 = greedy)")
    slider = page.locator(scope).get_by_label("range slider for Temperature (0 = greedy)")
    for _ in range(3):
        box.fill(value)
        box.press("Enter")
        browser_page.settle()
        if slider.input_value() == value:
            return
    raise AssertionError(f"the temperature slider shows {slider.input_value()} after typing {value} three times")


def greedy_answer_with_probabilities(browser_page, question: str) -> None:
    """Ask `question` in the Chat tab at temperature 0 and open the answer's probabilities once it is complete."""
    page = browser_page.page
    browser_page.open_tab("Chat")
    browser_page.open_accordion("Generation settings")
    set_temperature(browser_page, "#chatbot >> xpath=ancestor::*[@role='tabpanel'][1]", "0")
    page.locator("#chat-input textarea").fill(question)
    page.locator("#chat-input textarea").press("Enter")
    wait_for_text(page, "#chatbot", "stop: end of turn")
    browser_page.open_accordion("Answer tokens by probability")


def open_inside(browser_page, view: str) -> None:
    browser_page.open_tab("Inside")
    browser_page.open_tab(view)


def test_next_tokens_chart_table_and_settings(browser_page):
    page = browser_page.page
    open_inside(browser_page, "Next token")
    page.get_by_role("button", name="The capital of France is").first.click()
    wait_for_text(page, "#next-table", "␣Paris")
    page.wait_for_function("() => (document.querySelector('#next-plot canvas')?.width || 0) > 300", timeout=WAIT_MS)
    first = rows_of(page, "#next-table")[0]
    assert first[:2] == ["1", "␣Paris"] and first[5] == "yes"
    assert "entropy" in page.locator("#next-summary textarea").input_value()

    set_temperature(browser_page, "#inside-next", "0")
    page.locator("#next-run").click()
    wait_for_text(page, "#next-summary", "the sampler keeps 1 token (")
    assert page.locator("#next-summary textarea").input_value().endswith("entropy 0.00 bits")
    kept = [row[5] for row in rows_of(page, "#next-table")]
    assert kept[0] == "yes" and set(kept[1:]) == {"no"}

    page.locator("#next-text textarea").fill("")
    page.locator("#next-run").click()
    page.wait_for_function("() => /Type a text first/.test(document.body.innerText)", timeout=WAIT_MS)
    assert not browser_page.dialogs and not browser_page.page_errors


def test_a_run_clicked_while_the_last_one_finishes_runs_after_it(browser_page, monkeypatch):
    """The second click lands while the first run is still being computed (held there): it is not dropped, it runs
    next, and the newest text's answer is what the view ends up showing."""
    reached, release = threading.Event(), threading.Event()
    compute = demo.inside_tab.next_tokens

    def held(engine, text, **settings):
        if "alphabet" in text:
            reached.set()
            release.wait(HOLD_S)
        return compute(engine, text, **settings)

    monkeypatch.setattr(demo.inside_tab, "next_tokens", held)
    page = browser_page.page
    open_inside(browser_page, "Next token")
    box = page.locator("#next-text textarea")
    box.fill("The first letter of the alphabet is")
    page.locator("#next-run").click()
    assert reached.wait(HOLD_S)
    box.fill("The capital of France is")
    page.locator("#next-run").click()
    release.set()
    wait_for_text(page, "#next-table", "␣Paris")
    assert not browser_page.dialogs and not browser_page.page_errors


def test_contextual_line_and_table_for_bank(browser_page):
    page = browser_page.page
    open_inside(browser_page, "Contextual embeddings")
    page.get_by_role("button", name="river bank vs bank account").click()
    wait_for_text(page, "#ctx-followed", "B: 'bank'")
    assert "␣bank" in page.locator("#ctx-followed textarea").input_value()
    page.wait_for_function("() => !!document.querySelector('#ctx-plot svg.marks .mark-line path')", timeout=WAIT_MS)
    rows = rows_of(page, "#ctx-table")  # the rows drawn so far: the table draws what its height shows
    assert rows[0][:2] == ["0", "1"] and float(rows[1][1]) < 1
    assert rows[0][4].split()[0] == "␣bank"

    page.locator("#ctx-word-a textarea, #ctx-word-a input").first.fill("money")
    page.locator("#ctx-run").click()
    page.wait_for_function("() => /'money' does not occur in sentence A/.test(document.body.innerText)",
                           timeout=WAIT_MS)
    assert not browser_page.dialogs and not browser_page.page_errors


def test_logit_lens_grid_shows_markup_as_text(browser_page):
    page = browser_page.page
    open_inside(browser_page, "Logit lens")
    page.locator("#lens-text textarea").fill("<b>x</b><img src=x onerror=alert(1)> The capital of France is")
    page.locator("#lens-run").click()
    wait_for_text(page, "#lens-table", "␣Paris")
    rows = rows_of(page, "#lens-table")  # the rows drawn so far, from the output layer down
    assert rows[0][0] == "30 (output)" and [row[0] for row in rows[:3]] == ["30 (output)", "29", "28"]
    assert rows[0][-1].startswith("␣Paris ") and len(rows[0]) == 9
    assert page.locator("#lens-table img, #lens-table b").count() == 0
    assert "Showing the last 8 of" in page.locator("#lens-note textarea").input_value()
    assert not browser_page.dialogs and not browser_page.page_errors


def test_chat_answer_coloured_by_probability_with_alternatives(browser_page):
    page = browser_page.page
    greedy_answer_with_probabilities(browser_page, "What is the capital of Japan?")
    wait_for_text(page, "#answer-probs", "␣Tokyo")
    legend = page.locator("#answer-probs [data-testid='highlighted-text:category-legend']").inner_text()
    assert "≥ 90%" in legend and "< 10%" in legend
    answer = page.locator("#chatbot [data-testid=bot]").first.inner_text()
    shown = "".join(page.locator("#answer-probs .token .text").all_inner_texts()).replace("␣", " ")
    assert shown.strip() and shown.strip() in answer
    page.locator("#answer-probs .token").filter(has_text="Tokyo").first.click()
    wait_for_text(page, "#answer-alternatives", "← chosen")
    alternatives = rows_of(page, "#answer-alternatives")
    assert len(alternatives) == 5 and any("␣Tokyo" in row[1] and "chosen" in row[1] for row in alternatives)
    assert len(rows_of(page, "#answer-probs-table")) == len(page.locator("#answer-probs .token").all())
    assert not browser_page.dialogs and not browser_page.page_errors


HOSTILE = "<b>x</b><img src=x onerror=alert(1)> The cat sat on the mat."


def test_attention_overview_click_opens_a_head_and_markup_stays_text(browser_page):
    page = browser_page.page
    open_inside(browser_page, "Attention")
    page.locator("#attn-text textarea").fill(HOSTILE)
    page.locator("#attn-run").click()
    wait_for_text(page, "#attn-summary", "30 layers × 9 heads (3 key/value heads)")
    page.wait_for_function("() => (document.querySelector('#attn-map canvas')?.width || 0) > 200", timeout=WAIT_MS)
    roles = rows_of(page, "#attn-roles")
    assert roles and all(row[2] in ("first token", "previous token", "same token") for row in roles)
    overview = page.locator("#attn-overview img")
    natural = overview.evaluate("img => [img.naturalWidth, img.getBoundingClientRect().width]")
    scale = natural[1] / natural[0]  # the picture as drawn on the page
    layer, head = int(roles[0][0]), int(roles[0][1])
    overview.click(position={"x": (MARGIN + head * (CELL + GAP) + CELL / 2) * scale,
                             "y": (MARGIN + layer * (CELL + GAP) + CELL / 2) * scale})
    wait_for_text(page, "#attn-summary", f"Layer {layer}, head {head}: ")
    assert f"a {roles[0][2]} head" in page.locator("#attn-summary textarea").input_value()
    assert page.locator("#inside-attention img[src=x], #inside-attention b").count() == 0
    assert not browser_page.dialogs and not browser_page.page_errors


def test_attribution_scores_every_token_and_markup_stays_text(browser_page):
    page = browser_page.page
    open_inside(browser_page, "Attribution")
    page.locator("#attr-text textarea").fill(HOSTILE)
    page.locator("#attr-target input, #attr-target textarea").first.fill(" mat")
    page.locator("#attr-steps input[type=number]").fill("8")
    page.locator("#attr-steps input[type=number]").press("Enter")
    page.locator("#attr-run").click()
    wait_for_text(page, "#attr-summary", "Target ␣mat")
    assert "Integrated gradients, 8 steps" in page.locator("#attr-summary textarea").input_value()
    rows = rows_of(page, "#attr-table")
    assert [row[1] for row in rows[:3]] == ["<", "b", ">"] and rows[0][2] == "0"
    page.wait_for_function("() => (document.querySelector('#attr-plot canvas')?.width || 0) > 200", timeout=WAIT_MS)
    assert page.locator("#inside-attribution img[src=x], #inside-attribution b").count() == 0
    assert not browser_page.dialogs and not browser_page.page_errors


def test_why_this_token_attributes_a_chat_answer_token(browser_page):
    page = browser_page.page
    greedy_answer_with_probabilities(browser_page, "What is the capital of Japan?")
    page.locator("#answer-why").click()
    page.wait_for_function("() => /Click a token of the answer first/.test(document.body.innerText)",
                           timeout=WAIT_MS)
    page.locator("#answer-probs .token").filter(has_text="Tokyo").first.click()
    wait_for_text(page, "#answer-alternatives", "← chosen")
    page.locator("#answer-why").click()
    wait_for_text(page, "#answer-why-summary", "Target ␣Tokyo")
    summary = page.locator("#answer-why-summary textarea").input_value()
    assert "rank 1" in summary and "Integrated gradients, 32 steps" in summary
    page.wait_for_function("() => (document.querySelector('#answer-why-plot canvas')?.width || 0) > 200",
                           timeout=WAIT_MS)
    assert not browser_page.dialogs and not browser_page.page_errors
