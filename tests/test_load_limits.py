"""Server-side limits through the API: a full chat queue answers "busy"; limits hold for API callers too."""

from __future__ import annotations

import threading

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from core.config import AppConfig
from core.host import ModelHost
from tests.holds import hold_pushes
from tests.servers import launched


@pytest.fixture(scope="module")
def small_app(bundled):
    host = ModelHost.from_loaded(bundled, AppConfig(model="bundled", max_queue=1, max_new_tokens=64))
    with launched(host) as url:
        yield url, host
    host.close()


def test_overflowing_the_queue_returns_busy(small_app, monkeypatch):
    url, host = small_app
    engine = host.require().engine
    release = threading.Event()  # the first request stays in progress until the second has been refused
    hold_pushes(monkeypatch, lambda s: "dragon" in s.prompt.text, after=1, until=lambda _: release)
    first = Client(url, verbose=False).submit("Write a long story about a dragon.", [], "", 0.0, 1.0, 64, None,
                                               api_name="/chat")
    try:
        for _ in first:  # wait until the first request is generating
            break
        assert engine.stats()["requests_in_progress"] == 1
        with pytest.raises(AppError, match="busy"):
            Client(url, verbose=False).predict("Hi", [], "", 0.0, 1.0, 8, None, api_name="/chat")
    finally:
        first.cancel()
        release.set()


def test_api_callers_get_the_same_limits(small_app):
    url, _ = small_app
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match="from 1 to 64"):
        client.predict("Hi", [], "", 0.0, 1.0, 10_000, None, api_name="/chat")
    with pytest.raises(AppError, match="limit is 50,000"):
        client.predict("a" * 60_000, [], "", 0.0, 1.0, 8, None, api_name="/chat")
