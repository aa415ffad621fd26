"""The map of the whole vocabulary (core/embeddings/vocabulary_map.py, demo/vocabulary_map_view.py) on the bundled
model's 49,152 × 576 embedding matrix, on this machine's cores:

1. The first projection's time per method: PCA (2D and 3D); UMAP as the app runs it (a background process at lower
   priority, on half the cores, seeded so the map is reproducible); UMAP on every core without a seed (umap-learn's
   fastest); openTSNE, the lighter alternative, when it is importable (`--alternatives DIR` adds a folder holding it
   to sys.path; it is not a dependency).
2. A chat's tokens/s (ONNX engine, two chats together, greedy) while the app's UMAP process runs ÷ alone.
3. The figure's payload (JSON, and gzipped as the server may send it), and the time from opening the map until the
   browser has drawn it with UMAP cached (Debian's Chromium, software WebGL), first and median of the next ones; the
   map opened 0.5 s after the Embeddings tab, and 2 s after (the tab runs plotly.js as it opens), on this machine's
   loopback and on an emulated remote network (the page downloads plotly.js once loaded); a freshly started
   browser's first page apart, since the browser's own start-up is in it. Then the 2D map's time per
   zoom step, the time until the 3D map is drawn once picked (UMAP 3D, computed first like 2D), and its time per
   step turning it around.
4. Memory: the app process's allocations for the map (tracemalloc) and the UMAP process's peak RSS; the install size
   of the packages UMAP brings.

    python -m bench.bench_vocab_map [--tokens 96] [--views 4] [--alternatives /tmp/alt]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from importlib import metadata
from pathlib import Path

import psutil
import torch

from bench.bench_fair_share import chat_rate  # two chats together, greedy: mean tokens/s
from bench.results_io import write_results
from core.config import AppConfig, default_cache_dir
from core.embeddings.index import VocabIndex
from core.embeddings.projection import UmapSettings, pca
from core.embeddings.vocabulary_map import PROJECTION_THREADS, VocabularyMap
from core.engine.local import ChatEngine
from core.engine.onnx_model import load_onnx_model
from core.model.loading import load_model

UMAP_PACKAGES = ("umap-learn", "pynndescent", "numba", "llvmlite", "scikit-learn", "joblib", "threadpoolctl",
                 "narwhals", "cloudpickle")
TIMEOUT_S = 1800


def installed_mib(names: tuple[str, ...]) -> dict[str, float]:
    sizes = {}
    for name in names:
        dist = metadata.distribution(name)
        total = sum(Path(dist.locate_file(f)).stat().st_size for f in dist.files or []
                    if Path(dist.locate_file(f)).is_file())
        sizes[name] = round(total / 2**20, 1)
    return sizes


def timed_umap(vmap: VocabularyMap, dims: int = 2) -> tuple[float, float]:
    """Seconds until the map's UMAP process has written its result, and that process's peak RSS in MiB."""
    start = time.perf_counter()
    vmap.umap_state(dims)
    job = vmap._jobs[dims]
    peak = [0]

    def watch() -> None:
        try:
            proc = psutil.Process(job.process.pid)
            while job.process.poll() is None:
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.5)
        except psutil.NoSuchProcess:
            pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    state = vmap.wait(dims, TIMEOUT_S)
    watcher.join()
    if state != "ready":
        raise RuntimeError(f"UMAP: {state}")
    return time.perf_counter() - start, peak[0] / 2**20


AFTER_TAB_S = (0.5, 2.0)  # a click right after the tab opens, and one after reading it
# A remote Space seen from a home connection (Chrome DevTools' emulation): 20 Mbit/s down, 5 up, 40 ms round trip.
REMOTE = {"offline": False, "latency": 40, "downloadThroughput": 20e6 / 8, "uploadThroughput": 5e6 / 8}
READING_S = 3.0  # on the remote network: time on the Chat tab before opening Embeddings (the page's idle time)
DRAWN_2D = ("() => /word-initial \\(/.test(document.querySelector('#vmap-plot .legend')?.textContent || '') "
            "&& (document.querySelector('#vmap-plot canvas')?.width || 0) > 300 && "
            "/UMAP of/.test(document.querySelector('#vmap-note textarea')?.value || '')")
DRAWN_3D = ("() => { const gd = document.querySelector('#vmap-plot .js-plotly-plot'); return !!gd?._fullLayout?.scene "
            "&& (gd.querySelector('.gl-container canvas')?.width || 0) > 300 "
            "&& /word-initial \\(/.test(gd.querySelector('.legend')?.textContent || ''); }")
NEXT_FRAMES = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"
# Mean milliseconds per view change, `steps` in a row: zooming the 2D map in, or turning the 3D one around.
VIEW_STEPS = """async ([steps, three]) => {
  const gd = document.querySelector('#vmap-plot .js-plotly-plot'), L = gd._fullLayout;
  const frame = () => new Promise(done => requestAnimationFrame(() => done()));
  const [x0, x1] = three ? [0, 0] : L.xaxis.range, [y0, y1] = three ? [0, 0] : L.yaxis.range;
  const start = performance.now();
  for (let i = 1; i <= steps; i++) {
    const a = 2 * Math.PI * i / steps, f = 1 - 0.6 * i / steps, cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
    await window.Plotly.relayout(gd, three ? {'scene.camera.eye': {x: 1.8 * Math.cos(a), y: 1.8 * Math.sin(a), z: 0.8}}
      : {'xaxis.range': [cx - f * (x1 - x0) / 2, cx + f * (x1 - x0) / 2],
         'yaxis.range': [cy - f * (y1 - y0) / 2, cy + f * (y1 - y0) / 2]});
    await frame(); await frame();
  }
  return (performance.now() - start) / steps;
}"""


def open_embeddings(browser, url: str, network: dict | None) -> tuple[object, object]:
    """A fresh page with the app loaded (over `network`'s emulated conditions when given) and its Embeddings tab
    open; the page and the map's header."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(120_000)
    if network is not None:
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", network)
    page.goto(url)
    if network is not None:
        page.wait_for_timeout(READING_S * 1000)
    page.get_by_role("tab", name="Embeddings", exact=True).click()
    header = page.locator("#vmap").get_by_text("The whole vocabulary on one map")
    header.wait_for()
    return page, header


def browser_times(browser, url: str, views: int, after_tab_s: float, network: dict | None = None) -> list[float]:
    """Seconds from a click on the map's accordion (UMAP selected, already cached), `after_tab_s` after the tab's
    content appeared, until the browser has drawn the map with its legend, once per fresh page."""
    times = []
    for _ in range(views):
        page, header = open_embeddings(browser, url, network)
        page.wait_for_timeout(after_tab_s * 1000)
        start = time.perf_counter()
        header.click()
        page.wait_for_function(DRAWN_2D)
        page.evaluate(NEXT_FRAMES)
        times.append(time.perf_counter() - start)
        page.close()
    return times


def browser_3d(browser, url: str, views: int) -> dict[str, list[float]]:
    """Per fresh page, with the 2D map drawn: the mean time per zoom step of it (10 steps), the seconds from picking
    3D until the 3D map is drawn (UMAP 3D cached), and the mean time per step turning it around (12 steps)."""
    out: dict[str, list[float]] = {"zoom_2d_step_ms": [], "draw_3d_s": [], "turn_3d_step_ms": []}
    for _ in range(views):
        page, header = open_embeddings(browser, url, None)
        header.click()
        page.wait_for_function(DRAWN_2D)
        page.evaluate(NEXT_FRAMES)
        out["zoom_2d_step_ms"].append(page.evaluate(VIEW_STEPS, [10, False]))
        start = time.perf_counter()
        page.locator("#vmap").get_by_label("3D").check()
        page.wait_for_function(DRAWN_3D)
        page.evaluate(NEXT_FRAMES)
        out["draw_3d_s"].append(time.perf_counter() - start)
        out["turn_3d_step_ms"].append(page.evaluate(VIEW_STEPS, [12, True]))
        page.close()
    return out


def in_browser(host, views: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The map's times in Debian's Chromium (software WebGL), on the app launched around `host`."""
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM, CHROMIUM_ARGS
    from tests.servers import launched

    with launched(host) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        # a freshly started browser's first page also carries the browser's own start-up: counted apart
        opened = {f"{AFTER_TAB_S[0]:g} s after the tab, the browser's first page": browser_times(
            browser, url, 1, AFTER_TAB_S[0])}
        opened |= {f"{wait:g} s after the tab": browser_times(browser, url, views, wait) for wait in AFTER_TAB_S}
        opened[f"{AFTER_TAB_S[-1]:g} s after the tab, remote network (20 Mbit/s, 40 ms)"] = browser_times(
            browser, url, views, AFTER_TAB_S[-1], REMOTE)
        steps = browser_3d(browser, url, max(2, views // 2))
        browser.close()
    return opened, steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--alternatives", type=Path, default=None, help="a folder holding openTSNE (pip --target)")
    args = parser.parse_args()
    cache = default_cache_dir()
    loaded = load_model("bundled", device="cpu", cache_dir=cache)
    index = VocabIndex.from_model(loaded.model, loaded.tokenizer, use_gpu=False, cache_dir=cache)
    rows = index.unit_vectors
    first: dict[str, float] = {}
    for dims in (2, 3):
        start = time.perf_counter()
        pca(rows, dims)
        first[f"PCA {dims}D"] = time.perf_counter() - start

    scratch = tempfile.TemporaryDirectory(prefix="bench-vocab-map-")  # nothing cached from an earlier run
    folder = Path(scratch.name)
    tracemalloc.start()
    vmap = VocabularyMap(index, folder)
    vmap.layout("pca", 2)
    vmap.layout("pca", 3)
    held_mib = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()

    onnx, note = load_onnx_model(loaded.weights_dir, cache, torch.get_num_threads())
    engine = ChatEngine(loaded, max_batch=2, prefix_cache_mb=0, onnx=onnx, onnx_note=note)
    try:
        chat_rate(engine, 16)  # warm
        alone = [chat_rate(engine, args.tokens) for _ in range(2)]
        umap_start = time.perf_counter()
        box: dict[str, tuple[float, float]] = {}
        runner = threading.Thread(target=lambda: box.setdefault("umap", timed_umap(vmap)))
        runner.start()
        time.sleep(5)  # past the process's start-up and imports, into the projection itself
        during = []
        while vmap.umap_state(2, start=False) == "running" and len(during) < 3:
            during.append(chat_rate(engine, args.tokens))
        runner.join()
        alone.append(chat_rate(engine, args.tokens))
    finally:
        engine.close()
    umap_s, umap_peak_mib = box["umap"]
    first[f"UMAP as the app runs it (background process, {PROJECTION_THREADS} thread(s), nice 10, seeded)"] = umap_s
    print(f"UMAP (app) {umap_s:.1f} s, chats alone {alone}, during {during}", flush=True)
    umap3_s, umap3_peak_mib = timed_umap(vmap, 3)
    first[f"UMAP 3D as the app runs it (picked in the map; {PROJECTION_THREADS} thread(s), nice 10, seeded)"] = umap3_s

    fast = VocabularyMap(index, folder / "unseeded", settings=UmapSettings(seed=None),
                         threads=len(psutil.Process().cpu_affinity()))
    first[f"UMAP on {fast.threads} threads, no seed (umap-learn's fastest)"] = timed_umap(fast)[0]
    fast.close()
    if args.alternatives is not None:
        sys.path.insert(0, str(args.alternatives))
    try:
        import openTSNE

        start = time.perf_counter()
        openTSNE.TSNE(n_components=2, metric="cosine", n_jobs=len(psutil.Process().cpu_affinity()),
                      random_state=42).fit(rows)
        first[f"openTSNE {openTSNE.__version__} (cosine, perplexity 30, every core)"] = time.perf_counter() - start
        alternative_mib = round(sum(f.stat().st_size for f in Path(openTSNE.__file__).parent.rglob("*")
                                    if f.is_file()) / 2**20, 1)
    except ImportError:
        alternative_mib = None

    from demo.vocabulary_map_view import map_figure

    payload = {}
    for method, dims in (("umap", 2), ("umap", 3), ("pca", 2), ("pca", 3)):
        start = time.perf_counter()
        plot = map_figure(vmap, vmap.layout(method, dims)).plot
        build_s = time.perf_counter() - start
        body = plot.encode()
        sent = json.dumps(plot, ensure_ascii=False).encode()  # a string in gradio's message: quotes escaped again
        payload[f"{method} {dims}D"] = {"bytes": len(body), "sent_bytes": len(sent),
                                        "gzip_bytes": len(gzip.compress(body, 6)), "build_s": build_s}

    from core.host import ModelHost

    host = ModelHost.from_loaded(loaded, AppConfig(model="bundled", cache_dir=folder))
    try:
        views, steps = in_browser(host, args.views)
    finally:
        host.close()
    vmap.close()
    scratch.cleanup()
    sizes = installed_mib(UMAP_PACKAGES)
    table = [(f"first projection, {name}, 49,152 × 576", f"{seconds:.1f} s") for name, seconds in first.items()]
    table += [
        ("chat tokens/s alone (2 chats, greedy), each run", ", ".join(f"{r:.1f}" for r in alone)),
        ("chat tokens/s while the app's UMAP runs, each run", ", ".join(f"{r:.1f}" for r in during)),
        ("chat while UMAP runs ÷ alone (medians)", f"{statistics.median(during) / statistics.median(alone):.2f}"
         if during else "n/a"),
    ]
    table += [(f"payload, {name}: as sent (gradio's event stream, not compressed) / JSON / gzip",
               f"{p['sent_bytes'] / 2**20:.2f} / {p['bytes'] / 2**20:.2f} / {p['gzip_bytes'] / 2**20:.2f} MiB "
               f"(built in {p['build_s']:.2f} s)") for name, p in payload.items()]
    table += [(f"map drawn in Chromium after a click {when}, UMAP cached: first / median of the next (target ≤ 2 s)",
               f"{times[0]:.2f} s" + (f" / {statistics.median(times[1:]):.2f} s" if len(times) > 1 else ""))
              for when, times in views.items()]
    table += [
        ("2D map, UMAP: mean time per zoom step (10 steps), median of pages",
         f"{statistics.median(steps['zoom_2d_step_ms']):.0f} ms"),
        ("3D map drawn after picking 3D, UMAP 3D cached: each page",
         ", ".join(f"{t:.2f} s" for t in steps["draw_3d_s"])),
        ("3D map: mean time per step turning it around (12 steps), median of pages",
         f"{statistics.median(steps['turn_3d_step_ms']):.0f} ms"),
    ]
    table += [
        ("memory the app holds for the map (categories, PCA 2D+3D; tracemalloc)", f"{held_mib:.0f} MiB"),
        ("UMAP process's peak RSS, 2D / 3D", f"{umap_peak_mib:.0f} MiB / {umap3_peak_mib:.0f} MiB"),
        ("install size UMAP adds (" + ", ".join(f"{k} {v}" for k, v in sizes.items()) + " MiB)",
         f"{sum(sizes.values()):.0f} MiB"),
    ]
    if alternative_mib is not None:
        table.append(("install size of openTSNE (not a dependency; its needs scikit-learn and scipy too)",
                      f"{alternative_mib:.0f} MiB"))
    write_results("vocab_map", {"first_projection_s": first, "chat_alone_tokens_per_s": alone,
                                "chat_during_umap_tokens_per_s": during, "umap_wall_s_with_chats": umap_s,
                                "payload": payload, "browser_views_s": views, "browser_view_steps": steps,
                                "map_memory_mib": held_mib, "umap_peak_rss_mib": umap_peak_mib,
                                "umap_3d_peak_rss_mib": umap3_peak_mib, "install_mib": sizes,
                                "projection_threads": PROJECTION_THREADS, "runner": note,
                                "opentsne_install_mib": alternative_mib, "umap_started_at": umap_start}, table)


if __name__ == "__main__":
    main()
