"""The Evaluation tab in a real browser (Debian's Chromium through Playwright), on the bundled model."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def wait_for_text(page, selector: str, needle: str, timeout: float = 120_000) -> None:
    page.wait_for_function("([sel, needle]) => (document.querySelector(sel)?.innerText || '').includes(needle)",
                           arg=[selector, needle], timeout=timeout)


def test_a_small_evaluation_beside_the_literature(browser_page):
    page = browser_page.page
    browser_page.open_tab("Evaluation")
    assert "Pennington et al. 2014, Table 2" in page.locator("#eval-literature").inner_text()  # before any run
    assert "https://fh295.github.io/simlex.html" in page.locator("#eval-sources").inner_text()
    page.locator("#eval-limit input").fill("2")
    page.locator("#eval-run").click()
    wait_for_text(page, "#eval-sections", "gram9-plural-verbs")
    summary = page.locator("#eval-summary").inner_text()
    assert "the first 2 questions of each section" in summary and "Analogies, rule A" in summary
    assert "WordSim-353: ρ = 0.413" in summary
    sections = page.locator("#eval-sections").inner_text()
    assert "capital-common-countries" in sections and "syntactic" in sections
    literature = page.locator("#eval-literature").inner_text()
    assert "rule A" in literature and "GloVe, 300 dimensions" in literature
    assert "gensim evaluate_word_pairs" in page.locator("#eval-pairs").inner_text()
    assert not browser_page.dialogs and not browser_page.page_errors


def test_a_long_evaluation_shows_progress_and_cancels(browser_page):
    page = browser_page.page
    browser_page.open_tab("Evaluation")
    page.get_by_label("3CosMul").check()
    page.locator("#eval-limit input").fill("4999")  # nearly every question: minutes, unless cancelled
    page.locator("#eval-run").click()
    page.wait_for_function("() => [...document.querySelectorAll('.progress-level')]"
                           ".some(e => e.innerText.includes('Google analogies, rule A (3cosmul)'))")
    page.locator("#eval-cancel").click()
    wait_for_text(page, "#eval-summary", "Cancelled: the evaluation stops after the batch", timeout=30_000)
    page.locator("#eval-limit input").fill("1")  # the button works again
    page.locator("#eval-run").click()
    wait_for_text(page, "#eval-summary", "the first question of each section")
    assert "3cosmul" in page.locator("#eval-summary").inner_text()
    assert not browser_page.dialogs and not browser_page.page_errors
