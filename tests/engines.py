"""Building the in-process chat engine on either of its runners, for tests that hold for both."""

from __future__ import annotations

import pytest

from core.engine.local import ChatEngine
from core.model.loading import LoadedModel


def chat_engine(request: pytest.FixtureRequest, runner: str, loaded: LoadedModel, *args, **kwargs):
    """A ChatEngine on `loaded` whose tokens come from `runner`: "torch" (the loaded float32 weights) or "onnx" (the
    bundled model's ONNX Runtime conversion)."""
    if runner == "onnx":
        model, note = request.getfixturevalue("bundled_onnx")
        kwargs |= {"onnx": model, "onnx_note": note}
    return ChatEngine(loaded, *args, **kwargs)
