"""Screenshots of the Inside tab's views and Chat's answer probabilities (with "why this token"), for docs/inside.md,
and of the Embeddings tab's vocabulary map, for docs/embeddings.md: the app on the embedded model, driven by Debian's
Chromium through Playwright, each view cropped and saved as a small palette PNG under docs/. Name groups to take only
those (`inside`, `vocabulary-map`); the map waits for its UMAP projection, computed once and cached.

    .venv/bin/python -m docs.screenshots [inside] [vocabulary-map]
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

DOCS = Path(__file__).resolve().parent
TIMEOUT_MS = 120_000
UMAP_TIMEOUT_MS = 900_000  # the first UMAP of the whole vocabulary, where it is not cached yet


def save(page, selector: str, name: str) -> None:
    """The element's screenshot, reduced to 128 colours (the views are flat colours and text)."""
    from PIL import Image

    png = page.locator(selector).first.screenshot(animations="disabled")
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128)
    image.save(DOCS / name, optimize=True)
    print(f"{name}: {image.size[0]}×{image.size[1]}, {(DOCS / name).stat().st_size // 1024} KiB")


def wait_for(page, selector: str, needle: str) -> None:
    """Until the element (or, for a text box, its textarea's value) contains `needle`."""
    page.wait_for_function("([sel, needle]) => { const el = document.querySelector(sel); const box = "
                           "el?.querySelector('textarea'); return ((box ? box.value : el?.innerText) || '')"
                           ".includes(needle); }", arg=[selector, needle], timeout=TIMEOUT_MS)


def vocabulary_map(page) -> None:
    """The whole vocabulary under UMAP, with "king" and its neighbours lit up."""
    page.get_by_role("tab", name="Embeddings", exact=True).click()
    page.locator("#vmap").get_by_text("The whole vocabulary on one map").click()
    page.wait_for_function("() => /UMAP of/.test(document.querySelector('#vmap-note textarea')?.value || '')",
                           timeout=UMAP_TIMEOUT_MS)
    page.locator("#vmap-query textarea, #vmap-query input").first.fill("king")
    page.locator("#vmap-find").click()
    wait_for(page, "#vmap-neighbors", "␣queen")
    page.wait_for_function("() => [...document.querySelectorAll('#vmap-plot .textpoint text')]"
                           ".some(t => t.textContent === '␣queen')")
    page.wait_for_timeout(500)
    save(page, "#vmap", "embeddings-vocabulary-map.png")


def inside_and_chat(page) -> None:
    from demo.attention_view import CELL, GAP, MARGIN

    page.get_by_role("tab", name="Inside", exact=True).click()
    page.get_by_role("button", name="The capital of France is").first.click()
    wait_for(page, "#next-table", "Paris")
    page.wait_for_function("() => (document.querySelector('#next-plot canvas')?.width || 0) > 300")
    page.wait_for_timeout(500)  # the chart's transition
    save(page, "#inside-next", "inside-next-tokens.png")

    page.get_by_role("tab", name="Contextual embeddings", exact=True).click()
    page.get_by_role("button", name="river bank vs bank account").click()
    wait_for(page, "#ctx-followed", "B: 'bank'")
    page.wait_for_function("() => !!document.querySelector('#ctx-plot svg.marks .mark-line path')")
    save(page, "#inside-contextual", "inside-contextual.png")

    page.get_by_role("tab", name="Logit lens", exact=True).click()
    page.locator("#inside-lens").get_by_role("button", name="The capital of France is").click()
    wait_for(page, "#lens-table", "Paris")
    save(page, "#inside-lens", "inside-logit-lens.png")

    page.get_by_role("tab", name="Attention", exact=True).click()
    page.locator("#attn-run").click()
    wait_for(page, "#attn-summary", "heads named")
    layer, head = 1, 2  # a previous-token head of the bundled model, opened by a click on the overview
    overview = page.locator("#attn-overview img")
    natural, shown = overview.evaluate("img => [img.naturalWidth, img.getBoundingClientRect().width]")
    overview.click(position={"x": (MARGIN + head * (CELL + GAP) + CELL / 2) * shown / natural,
                             "y": (MARGIN + layer * (CELL + GAP) + CELL / 2) * shown / natural})
    wait_for(page, "#attn-summary", f"Layer {layer}, head {head}")
    page.wait_for_timeout(500)
    save(page, "#inside-attention", "inside-attention.png")

    page.get_by_role("tab", name="Attribution", exact=True).click()
    page.locator("#attr-run").click()
    wait_for(page, "#attr-summary", "Target")
    page.wait_for_function("() => (document.querySelector('#attr-plot canvas')?.width || 0) > 300")
    page.wait_for_timeout(500)
    save(page, "#inside-attribution", "inside-attribution.png")

    page.get_by_role("tab", name="Chat", exact=True).click()
    page.get_by_text("Generation settings").click()
    temperature = page.locator("#chatbot >> xpath=ancestor::*[@role='tabpanel'][1]").get_by_label(
        "number input for Temperature (0 = greedy)")
    temperature.fill("0")
    temperature.press("Enter")
    page.locator("#chat-input textarea").fill("What is the capital of Japan?")  # not a near tie: see tests
    page.locator("#chat-input textarea").press("Enter")
    wait_for(page, "#chatbot", "stop: end of turn")
    page.get_by_text("Answer tokens by probability").first.click()
    wait_for(page, "#answer-probs", "Tokyo")
    page.locator("#answer-probs .token").filter(has_text="Tokyo").first.click()
    wait_for(page, "#answer-alternatives", "chosen")
    page.locator("#answer-why").click()
    wait_for(page, "#answer-why-summary", "Target")
    page.wait_for_function("() => (document.querySelector('#answer-why-plot canvas')?.width || 0) > 300")
    page.wait_for_timeout(500)
    save(page, "#answer-probs-accordion", "chat-answer-probabilities.png")


GROUPS = {"inside": inside_and_chat, "vocabulary-map": vocabulary_map}


def main(names: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    from core.config import AppConfig, default_cache_dir
    from core.host import ModelHost
    from core.model.loading import load_model
    from tests.browser import CHROMIUM, CHROMIUM_ARGS
    from tests.servers import launched

    unknown = sorted(set(names) - set(GROUPS))
    if unknown:
        raise SystemExit(f"unknown screenshot groups {unknown}; choose from {sorted(GROUPS)}")
    host = ModelHost.from_loaded(load_model("bundled", device="cpu", cache_dir=default_cache_dir()),
                                 AppConfig(model="bundled"))
    with launched(host) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        for name, take in GROUPS.items():
            if names and name not in names:
                continue
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            take(page)
            page.close()
        browser.close()
    host.close()


if __name__ == "__main__":
    main(sys.argv[1:])
