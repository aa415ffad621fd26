"""Hugging Face ZeroGPU support: `gpu(fn)` is `spaces.GPU(fn)` on ZeroGPU hardware, and `fn` itself elsewhere.

On ZeroGPU a Space has no GPU of its own: a function decorated with `spaces.GPU`, called while handling a request,
borrows one for the length of the call (it runs in a forked worker process that sees the GPU). CUDA work anywhere
else, such as the local chat engine's long-lived worker thread, finds no GPU. So on ZeroGPU the host uses
`core.engine.zerogpu_engine.ZeroGPUChatEngine`, which generates inside a `gpu`-decorated call per request.

Import this module before torch (app.py does): the `spaces` package patches torch when it is imported.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

DEFAULT_DURATION = 90  # seconds of GPU one call may hold: a long Phi-3 answer, with margin


def on_zerogpu() -> bool:
    """True on ZeroGPU hardware: the `spaces` package is installed and the platform sets SPACES_ZERO_GPU."""
    flag = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
    return flag and importlib.util.find_spec("spaces") is not None


if on_zerogpu():  # pragma: no cover (only on ZeroGPU hardware)
    import spaces  # noqa: F401  (imported before torch, as ZeroGPU requires)


def gpu(fn: F | None = None, *, duration: int = DEFAULT_DURATION) -> F | Callable[[F], F]:
    """Decorate a function that needs the GPU: `spaces.GPU` on ZeroGPU, unchanged elsewhere.

    Works bare (`@gpu`) and with arguments (`@gpu(duration=30)`); plain functions and generators both work.
    """
    def decorate(f: F) -> F:
        if not on_zerogpu():
            return f
        import spaces

        return spaces.GPU(f, duration=duration)

    return decorate(fn) if fn is not None else decorate
