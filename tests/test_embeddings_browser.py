"""The Embeddings tab in a real browser (Debian's Chromium through Playwright), on the bundled model."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def text_of(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def wait_for_text(page, selector: str, needle: str) -> None:
    """Until the element (or, for a text box, its textarea's value) contains `needle`."""
    page.wait_for_function("([sel, needle]) => { const el = document.querySelector(sel); const box = "
                           "el?.querySelector('textarea'); return ((box ? box.value : el?.innerText) || '')"
                           ".includes(needle); }", arg=[selector, needle])


def first_token(page, selector: str) -> str:
    """The token cell of a neighbours table's first row."""
    lines = [line.strip() for line in text_of(page, selector).splitlines() if line.strip()]
    start = lines.index("folded variants")
    assert lines[start + 1] == "1"
    return lines[start + 2]


def test_neighbours_switches_map_and_errors(browser_page):
    page = browser_page.page
    browser_page.open_tab("Embeddings")
    query = page.locator("#emb-query textarea, #emb-query input").first
    query.fill("king")
    page.locator("#emb-find").click()
    wait_for_text(page, "#emb-neighbors", "␣queen")
    assert "␣King" not in text_of(page, "#emb-neighbors")  # variants of the query are left out
    assert "␣king" in page.locator("#emb-resolved textarea").input_value()
    # the map: a Vega chart drawn on a canvas the width of its block
    page.wait_for_function("() => (document.querySelector('#emb-map canvas')?.width || 0) > 300")

    page.get_by_label("Group variants (case, leading space, plural)").check()
    page.locator("#emb-find").click()
    # ␣Queen folded into the variants column of the ␣queen row
    page.wait_for_function("() => (document.querySelector('#emb-neighbors')?.innerText || '').split('\\n')"
                           ".some(line => line.includes('␣Queen') && line.trim() !== '␣Queen')")
    cells = [line.strip() for line in text_of(page, "#emb-neighbors").splitlines()]
    assert cells.count("␣queen") == 1 and "␣Queen" not in cells  # one row for queen ...
    assert any("␣Queen" in cell and "Queen" in cell.replace("␣Queen", "") for cell in cells)  # ... variants beside

    query.fill("<|im_end|>")
    page.get_by_label("Hide special and byte tokens").uncheck()
    page.locator("#emb-find").click()
    wait_for_text(page, "#emb-resolved", "special token")
    assert "<|im_end|>" in page.locator("#emb-resolved textarea").input_value()  # shown as text, not markup

    query.fill("#99999999")
    page.locator("#emb-find").click()
    page.wait_for_function("() => /not in the vocabulary/.test(document.body.innerText)")
    assert not browser_page.dialogs and not browser_page.page_errors


def test_analogy_presets_similarity_and_odd_one_out(browser_page):
    page = browser_page.page
    browser_page.open_tab("Embeddings")
    page.get_by_role("button", name="walked − walk + swim").click()
    wait_for_text(page, "#emb-analogy", "␣swam")
    assert first_token(page, "#emb-analogy") == "␣swam"
    page.get_by_role("button", name="king − man + woman").click()
    wait_for_text(page, "#emb-analogy", "␣queen")
    assert first_token(page, "#emb-analogy") == "␣queen"

    page.get_by_role("button", name="Compare").click()
    wait_for_text(page, "#emb-similarity", "cosine = 0.6")
    page.get_by_role("button", name="Find the odd one out").click()
    wait_for_text(page, "#emb-odd", "Odd one out: cereal")
    assert not browser_page.dialogs and not browser_page.page_errors
