"""No text shown in the page makes the browser fetch another host: a chat answer and a pasted message holding remote
images and raw HTML, and an error message quoting them (Debian's Chromium through Playwright).

The proof is on the other host's side: a server on another port (another origin) records every request it gets.
The chat answer comes from an OpenAI-compatible server that streams a scripted text, through the app's remote engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from core.config import AppConfig
from core.host import ModelHost
from core.model.embeddings_only import load_embeddings_only
from tests.servers import HitCounter, ScriptedChatServer, launched

pytestmark = pytest.mark.browser


def payload(host: str, tag: str) -> str:
    return (f"Look ![cat]({host}/{tag}-md.png) and <img src={host}/{tag}-html.png> and ![r][ref] "
            f"<video poster={host}/{tag}-poster.png></video> <div style=\"background:url({host}/{tag}-bg.png)\">"
            f"bg</div> <b>bold?</b> `code <i>` done\n\n[ref]: {host}/{tag}-ref.png\n\n"
            f"```html\n<img src={host}/{tag}-fenced.png>\n```\n")


@pytest.fixture(scope="module")
def foreign() -> Iterator[HitCounter]:
    counter = HitCounter()
    yield counter
    counter.close()


@pytest.fixture(scope="module")
def scripted_server(foreign) -> Iterator[ScriptedChatServer]:
    server = ScriptedChatServer(payload(foreign.url, "answer"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def scripted_app(cache_dir, scripted_server) -> Iterator[str]:
    server = scripted_server
    embeddings = load_embeddings_only("bundled", device="cpu", dtype="auto", cache_dir=cache_dir)
    host = ModelHost.from_loaded(embeddings, AppConfig(model="bundled", engine_url=server.url, engine_model="scripted"))
    try:
        with launched(host) as url:
            yield url
    finally:
        host.close()


def test_chat_and_errors_fetch_nothing_from_other_hosts(browser, scripted_app, scripted_server, foreign):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    scripted_requests = scripted_server.requests
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(scripted_app, wait_until="domcontentloaded")
        page.wait_for_selector("[role=tab]")
        box = page.locator("#chat-input textarea")
        box.fill(payload(foreign.url, "pasted"))
        box.press("Enter")
        chat = page.locator("#chatbot")
        # the answer is done when its stats line shows a stop reason; an error toast ends the wait too, so a failure
        # says what the page showed instead of timing out silently
        toasts = page.locator(".toast-body, [data-testid=toast-body]")
        with contextlib.suppress(PlaywrightTimeout):  # the assertion below says what the page showed
            page.wait_for_function("() => /stop: (?!running)/.test(document.querySelector('#chatbot').innerText)"
                                   " || document.querySelector('.toast-body, [data-testid=toast-body]')",
                                   timeout=90_000)
        shown_at_end = chat.inner_text() + " | toasts: " + " / ".join(toasts.all_inner_texts())
        assert "stop: end of turn" in shown_at_end, (
            f"the scripted answer did not end its turn; chat requests the server got: {len(scripted_requests)}; "
            f"the page showed: {shown_at_end[-1500:]}")
        # the images are links to click, the raw HTML is text, the code is code
        assert chat.locator("img[src*='127.0.0.1']").count() == 0
        assert chat.locator(f"a[href='{foreign.url}/answer-md.png']").count() >= 1
        shown = chat.inner_text().replace("\u200b", "")  # the zero-width spaces that break images and tags up
        assert "<img src=" in shown and "<b>bold?</b>" in shown
        assert chat.locator("b", has_text="bold?").count() == 0

        page.get_by_role("tab", name="Embeddings", exact=True).click()
        query = page.locator("#emb-query textarea, #emb-query input").first
        query.fill(f"<img src={foreign.url}/error.png>")
        page.locator("#emb-find").click()
        toast = page.locator(".toast-body, [data-testid=toast-body]").first
        toast.wait_for(timeout=30_000)
        assert "<img src=" in toast.inner_text()
        page.wait_for_timeout(1500)  # time for any request the page would make
    finally:
        context.close()
    assert foreign.hits == [], f"the page fetched from another host: {foreign.hits}"
