"""Real-browser fixtures: Debian's Chromium driven by Playwright (never `playwright install`).

Use them from a test module (or conftest) by importing the fixtures:

    from tests.browser import browser, browser_page  # noqa: F401

    @pytest.mark.browser
    def test_something(browser_page):
        browser_page.open_tab("Tokens")
        browser_page.page.fill("#tokens-text textarea", "hello")
        assert not browser_page.dialogs

`browser_page` opens the launched app (the `app_url` fixture) in a fresh context and records every JavaScript
dialog (alert/confirm/prompt: dismissed at once), uncaught page error and console error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("TOKEN_LAB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
LOAD_TIMEOUT_MS = 30_000
SETTLE_FRAMES = 3


@dataclass
class BrowserPage:
    """A page showing the app, with what it did that a test may want to assert on."""

    page: Any  # playwright.sync_api.Page
    url: str
    dialogs: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def open_tab(self, name: str) -> None:
        """Click the tab labelled `name` and wait until it is selected and its content settled."""
        tab = self.page.get_by_role("tab", name=name, exact=True)
        tab.click()
        self.page.wait_for_function(
            "name => [...document.querySelectorAll('[role=tab]')]"
            ".some(t => t.textContent.trim() === name && t.getAttribute('aria-selected') === 'true')",
            arg=name, timeout=LOAD_TIMEOUT_MS)
        self.settle()

    def open_accordion(self, label: str) -> None:
        """Open the (closed) accordion labelled `label` and wait until its content is shown and settled."""
        header = self.page.locator(".label-wrap", has_text=label).first
        header.click()
        header.locator("xpath=following-sibling::*[@data-testid='accordion-content'][1]").wait_for(state="visible")
        self.settle()

    def settle(self) -> None:
        """Let the page paint a few frames. Gradio renders a tab's or an accordion's children when first shown and,
        an animation frame later, sets them to their configured values again: what is typed before then is lost."""
        self.page.evaluate("frames => new Promise(done => { const next = left => left ? "
                           "requestAnimationFrame(() => next(left - 1)) : done(); next(frames); })", SETTLE_FRAMES)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session; skipped where Chromium or Playwright is absent."""
    if not CHROMIUM.is_file():
        pytest.skip(f"browser tests need Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser tests need the playwright package (requirements-dev.txt)")
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    except Exception:
        playwright.stop()
        raise
    try:
        yield chromium
    finally:
        chromium.close()
        playwright.stop()


@contextlib.contextmanager
def page_at(browser: Any, url: str) -> Iterator[BrowserPage]:
    """The app at `url` open in a fresh browser context, loaded and ready."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(LOAD_TIMEOUT_MS)
    session = BrowserPage(page=page, url=url)

    def on_dialog(dialog: Any) -> None:
        session.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: session.page_errors.append(str(exc)))
    page.on("console", lambda msg: session.console_errors.append(msg.text) if msg.type == "error" else None)
    try:
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector("[role=tab]", timeout=LOAD_TIMEOUT_MS)
        yield session
    finally:
        context.close()


@pytest.fixture
def browser_page(browser: Any, app_url: str) -> Iterator[BrowserPage]:
    """The session's app (`app_url`) open in a fresh browser context, loaded and ready."""
    with page_at(browser, app_url) as session:
        yield session
