"""Building the in-process chat engine on either of its runners, for tests that hold for both."""

from __future__ import annotations

import threading

import pytest

from core.engine.local import ChatEngine
from core.engine.settings import GenerationSettings
from core.model.loading import LoadedModel
from tests.streams import collect


def chat_engine(request: pytest.FixtureRequest, runner: str, loaded: LoadedModel, *args, **kwargs):
    """A ChatEngine on `loaded` whose tokens come from `runner`: "torch" (the loaded float32 weights) or "onnx" (the
    bundled model's ONNX Runtime conversion)."""
    if runner == "onnx":
        model, note = request.getfixturevalue("bundled_onnx")
        kwargs |= {"onnx": model, "onnx_note": note}
    return ChatEngine(loaded, *args, **kwargs)


def run_together(engine: ChatEngine, questions: list[str], settings: GenerationSettings) -> list[str]:
    """Each question's answer, all submitted before the worker admits any, so they decode in one batch."""
    streams = [engine.chat(q, [], "", settings) for q in questions]
    results: list[str] = [""] * len(streams)

    def consume(i: int) -> None:
        results[i] = collect(streams[i])

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return results

