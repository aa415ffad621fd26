"""Waiting on a chat stream from a test or a benchmark, which a web request never does (it iterates the stream)."""

from __future__ import annotations

import time

from core.engine.stream import ChatStream


def collect(stream: ChatStream) -> str:
    """Consume `stream` and return the final answer (raises GenerationError if generation failed)."""
    text = ""
    for text in stream:  # noqa: B007  (the last update is the answer)
        pass
    return text


def finished(stream: ChatStream, timeout: float) -> bool:
    """Whether `stream` finishes (in any way) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not stream.done and time.monotonic() < deadline:
        time.sleep(0.005)
    return stream.done
