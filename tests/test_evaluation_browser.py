"""The Evaluation tab in a real browser (Debian's Chromium through Playwright), on the bundled model."""

from __future__ import annotations

import threading
import time

import pytest

from core.embeddings import evaluator
from core.work import cancel
from tests.holds import HOLD_S

pytestmark = pytest.mark.browser
LONG_LIMIT = 4999  # nearly every question: minutes, unless cancelled


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


def hold_long_scoring(monkeypatch: pytest.MonkeyPatch, release: threading.Event) -> threading.Event:
    """The long evaluation's analogy scoring (this process runs the app) reports its first progress, then waits
    until it has been asked to stop and `release` is set (bounded, as tests/holds.py's holds): it is still running
    when Cancel is clicked, and it does not end (and replace Cancel's message with its own) before the test has
    read that message, however fast the machine scores. The event returned is set when the held scoring has seen
    the stop request."""
    score_analogies = evaluator.score_analogies
    asked_to_stop = threading.Event()

    def held(*args, limit: int = 0, progress=None, step=None, **kwargs):
        if limit != LONG_LIMIT or progress is None or step is None:
            return score_analogies(*args, limit=limit, progress=progress, step=step, **kwargs)
        reported: list[int] = []

        def report(done: int, total: int) -> None:
            progress(done, total)
            reported.append(done)
            if len(reported) == 1:
                deadline = time.monotonic() + HOLD_S  # a liveness bound, as tests/holds.py's
                while time.monotonic() < deadline:
                    if cancel.current().cancelled:  # the request's cancel token (core/work/cancel.py)
                        asked_to_stop.set()
                        if release.is_set():
                            break
                    release.wait(0.01)

        return score_analogies(*args, limit=limit, progress=report, step=step, **kwargs)

    monkeypatch.setattr(evaluator, "score_analogies", held)
    return asked_to_stop


def test_a_long_evaluation_shows_progress_and_cancels(browser_page, monkeypatch):
    """A long evaluation shows its stage's progress and Cancel stops it (its scoring held after its first progress
    report until Cancel has asked it to stop and the test has read Cancel's message); the Evaluate button works
    again afterwards."""
    release = threading.Event()
    asked_to_stop = hold_long_scoring(monkeypatch, release)
    page = browser_page.page
    browser_page.open_tab("Evaluation")
    page.get_by_label("3CosMul").check()
    page.locator("#eval-limit input").fill(str(LONG_LIMIT))
    page.locator("#eval-run").click()
    try:
        page.wait_for_function("() => [...document.querySelectorAll('.progress-level')]"
                               ".some(e => e.innerText.includes('Google analogies, rule A (3cosmul)'))")
        page.locator("#eval-cancel").click()
        wait_for_text(page, "#eval-summary", "Cancelled: the evaluation stops after the batch", timeout=30_000)
    finally:
        release.set()
    assert asked_to_stop.wait(HOLD_S), "Cancel did not ask the running evaluation to stop"
    page.locator("#eval-limit input").fill("1")  # the button works again
    page.locator("#eval-run").click()
    wait_for_text(page, "#eval-summary", "the first question of each section")
    assert "3cosmul" in page.locator("#eval-summary").inner_text()
    assert not browser_page.dialogs and not browser_page.page_errors
