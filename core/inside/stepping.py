"""A view's passes in steps of one decoder layer, so that a chat sharing the model waits for one layer at most.

The engine's worker runs an inspection one step at a time between two decoding steps (core/engine/jobs.py), and a
step of a generator can only end where the generator yields: between whole forward (and backward) calls. Here the
calls run in a thread of their own that stops at every layer boundary, forward and backward alike (a hook before
each decoder layer, a gradient hook on each layer's output), and each step of the generator lets it run to its next
stop. The two threads never compute at the same time: the worker waits while the pass thread runs, and the pass
thread waits while the worker decodes. Closing the generator (a cancelled view) ends the pass at its next stop.

    weights = yield from stepped(model, attention_weights(model, ids))    # a view's passes, stopping at each layer
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

from core.inside.anatomy import anatomy
from core.inside.forward import Step

T = TypeVar("T")
Stop = Callable[[], None]  # called in the pass thread where it may stop


class _Closed(Exception):
    """Raised in the pass thread at its next stop once the generator is closed."""


def in_layer_steps(work: Callable[[Stop], T], step: Step | Callable[[], Step]) -> Generator[Step, None, T]:
    """Run `work(stop)` in a thread of its own, one stretch between two `stop()` calls per step of this generator,
    which yields `step` (or what it returns: the progress so far) after each stretch and returns `work`'s result."""
    go, stopped = threading.Semaphore(0), threading.Semaphore(0)
    outcome: dict[str, Any] = {}
    closed = threading.Event()

    def stop() -> None:
        stopped.release()
        go.acquire()
        if closed.is_set():
            raise _Closed

    def run() -> None:
        go.acquire()
        try:
            if not closed.is_set():
                outcome["value"] = work(stop)
        except BaseException as exc:  # handed to the generator's caller
            outcome["error"] = exc
        finally:
            outcome["done"] = True
            stopped.release()

    thread = threading.Thread(target=run, name="token-lab-view-pass", daemon=True)
    thread.start()
    try:
        while True:
            go.release()
            stopped.acquire()
            if outcome.get("done"):
                break
            yield step() if callable(step) else step
    finally:
        if not outcome.get("done"):
            closed.set()
            go.release()
            thread.join()
    error = outcome.get("error")
    if error is not None and not isinstance(error, _Closed):
        raise error
    return outcome["value"]


@contextlib.contextmanager
def layer_stops(model: nn.Module, stop: Stop) -> Iterator[None]:
    """Inside the block, this thread's forward calls stop before each decoder layer and the LM head, and a backward
    pass through them stops before each one's gradient is computed. Hooks belong to the module: each one keeps its own
    thread's calls only."""
    me = threading.get_ident()
    parts = anatomy(model)

    def before(_module: nn.Module, _args: Any) -> None:
        if threading.get_ident() == me:
            stop()

    def after(_module: nn.Module, _args: Any, out: Any) -> None:
        hidden = out[0] if isinstance(out, tuple) else out
        if threading.get_ident() == me and isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            hidden.register_hook(lambda grad: stop())

    # the LM head too: a vocabulary-wide layer, whose forward and backward are each a stretch of their own
    hooks = [hook for layer in [*parts.layers, parts.lm_head] for hook in (layer.register_forward_pre_hook(before),
                                                                            layer.register_forward_hook(after))]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def stepped(model: nn.Module, passes: Generator[Step, None, T]) -> Generator[Step, None, T]:
    """A view's generator of whole passes (`passes`) driven in a pass thread that also stops at every layer, under
    inference mode as the worker runs views (a pass that needs gradients turns it off for itself)."""
    progress: list[Step] = [(0, 1, "starting")]

    def work(stop: Stop) -> T:
        with torch.inference_mode(), layer_stops(model, stop):
            while True:
                try:
                    progress[0] = next(passes)
                except StopIteration as end:
                    return end.value
                stop()  # the view's own pauses stay pauses

    try:
        return (yield from in_layer_steps(work, lambda: progress[0]))
    finally:
        passes.close()
