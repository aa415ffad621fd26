"""Heavy work through the app's doors, on the launched app with the bundled model: a request cancelled through
gradio_client stops its work, and the evaluations' limit holds at gradio's /run/ door, which skips the queue. The
evidence is the server's own counters (/engine_stats), never a clock."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable

import httpx

from core.embeddings.evaluator import check_request, evaluator_for
from tests.holds import HOLD_S

PASSAGE = "The river bank was quiet in the early morning, and a heron stood in the shallow water. "


def stats(client) -> dict:
    return client.predict(api_name="/engine_stats")


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll the server until `predicate` holds (a liveness bound, not a timing assertion)."""
    for _ in range(int(HOLD_S / 0.05)):
        if predicate():
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"never saw: {what}")


def test_a_cancelled_evaluate_through_gradio_client_stops_and_frees_its_turn(client, bundled_host):
    before = stats(client)["evaluations"]
    job = client.submit("google_analogy", "3cosmul", 4999, api_name="/evaluate")
    wait_until(lambda: stats(client)["evaluations"]["running"] == 1, "the evaluation running")
    job.cancel()
    wait_until(lambda: stats(client)["evaluations"]["running"] == 0, "the evaluation gone")
    after = stats(client)["evaluations"]
    assert after["cancelled"] == before["cancelled"] + 1 and after["finished"] == before["finished"] + 1
    parts = bundled_host.require()
    evaluator = evaluator_for(parts.index, parts.loaded.name, bundled_host.config.cache_dir, bundled_host.work)
    assert not evaluator.cached(check_request("google_analogy", "3cosmul", 4999))  # it never ran to its end


def test_two_run_evaluate_calls_never_run_at_once(client, app_url):
    """gradio's /run/NAME calls the function outside the queue and its concurrency limits; the limit in core holds
    there too: the second call waits for the first."""
    before = stats(client)["evaluations"]

    def post(limit: int) -> httpx.Response:
        return httpx.post(f"{app_url}gradio_api/run/evaluate", json={"data": ["google_analogy", "3cosadd", limit]},
                          timeout=HOLD_S * 5)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(post, [4001, 4002]))
    assert [r.status_code for r in responses] == [200, 200]
    assert {r.json()["data"][0]["limit"] for r in responses} == {4001, 4002}
    after = stats(client)["evaluations"]
    assert after["waited"] >= before["waited"] + 1, "the two calls did not overlap"
    assert after["peak_running"] == 1 and after["finished"] == before["finished"] + 2


def test_a_cancelled_inside_view_through_gradio_client_leaves_the_worker(client):
    before = stats(client)["inspections"]
    job = client.submit(PASSAGE * 120, 5, 1.0, 1.0, 0, False, api_name="/next_tokens")
    wait_until(lambda: stats(client)["inspections"]["running"] == 1, "the inspection running")
    job.cancel()
    wait_until(lambda: stats(client)["inspections"]["running"] == 0, "the inspection gone")
    after = stats(client)["inspections"]
    assert after["cancelled"] == before["cancelled"] + 1 and after["finished"] == before["finished"]
