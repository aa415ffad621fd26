"""ZeroGPU support, off ZeroGPU: `gpu` is the identity, the per-request engine gives the local engine's answers, and
on a (simulated) ZeroGPU platform `gpu` hands functions to `spaces.GPU` and the host picks the per-request engine.

Real ZeroGPU hardware cannot run here; `spaces` is replaced by a stand-in module only to see what is passed to it.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest

from core.config import AppConfig, RequestLimits
from core.engine.local import ChatEngine
from core.engine.settings import GenerationSettings
from core.engine.zerogpu import gpu, on_zerogpu
from core.engine.zerogpu_engine import ZeroGPUChatEngine
from core.host import ModelHost
from tests.streams import finished

GREEDY = GenerationSettings(temperature=0.0, top_p=1.0, max_new_tokens=48)


@pytest.fixture
def fake_zerogpu(monkeypatch: pytest.MonkeyPatch) -> list:
    """SPACES_ZERO_GPU=true and a `spaces` module whose GPU records its calls."""
    calls: list = []
    spaces = types.ModuleType("spaces")
    spaces.__spec__ = importlib.machinery.ModuleSpec("spaces", None)

    def GPU(fn, duration=None):
        calls.append((fn, duration))
        return fn

    spaces.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", spaces)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    return calls


def test_gpu_is_the_identity_off_zerogpu():
    def f() -> int:
        return 1

    assert not on_zerogpu()
    assert gpu(f) is f and gpu(duration=5)(f) is f


def test_gpu_uses_spaces_gpu_on_zerogpu(fake_zerogpu: list):
    def f() -> int:
        return 1

    assert on_zerogpu()
    gpu(f)
    gpu(duration=30)(f)
    assert fake_zerogpu == [(f, 90), (f, 30)]


def test_lab_uses_the_per_request_engine_on_zerogpu(fake_zerogpu: list, bundled):
    host = ModelHost.from_loaded(bundled, AppConfig(model="bundled", max_queue=2))
    try:
        assert isinstance(host.require().engine, ZeroGPUChatEngine)
    finally:
        host.close()


def test_same_greedy_answer_as_the_local_engine(bundled):
    """ZeroGPU decodes with torch on the loaded weights: the same answer as the local engine's torch runner."""
    engine, local = ZeroGPUChatEngine(bundled, RequestLimits(max_queue=2)), ChatEngine(bundled, max_batch=2)
    try:
        stream = engine.chat("What is the capital of France?", [], "", GREEDY)
        texts = list(stream)
        assert "Paris" in texts[-1] and stream.stop_reason == "end of turn"
        there = local.chat("What is the capital of France?", [], "", GREEDY)
        finished(there, 120)
        assert stream.token_ids == there.token_ids
        assert stream.stats.generated_tokens == len(stream.token_ids) and stream.stats.ttft_s is not None
    finally:
        engine.close()
        local.close()


def test_cancel_and_busy(bundled):
    from core.errors import BusyError

    engine = ZeroGPUChatEngine(bundled, RequestLimits(max_queue=1))
    try:
        stream = engine.chat("Write a very long essay about the history of Europe.", [], "",
                             GenerationSettings(temperature=0.0, max_new_tokens=1000))
        with pytest.raises(BusyError):
            engine.chat("Hi", [], "", GREEDY)
        for i, _text in enumerate(stream):
            if i == 2:
                break  # a consumer that goes away cancels
        assert finished(stream, 10) and stream.stop_reason == "stopped"
        assert len(stream.token_ids) < 1000 and engine.stats()["requests_in_progress"] == 0
    finally:
        engine.close()
