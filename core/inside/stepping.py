"""A view's passes in short stretches, so that a chat sharing the model waits for a few milliseconds at most.

The engine's worker runs an inspection one step at a time between two decoding steps (core/engine/jobs.py), and a
step of a generator can only end where the generator yields: between whole forward (and backward) calls. Here the
calls run in a thread of their own that may stop before every sublayer of the decoder layers and the LM head (each
leaf module: a projection, a norm, an activation) and, backward, at each one's output gradient; it stops at the first
of those once its stretch has run its length (the worker sends one with every step: core/work/fair_share.py's
`Stretch`), so a stretch lasts that long plus one sublayer at most, however long the text and whatever the layer
sizes, on as many of torch's threads as the worker says (one while chats run). Each step of the generator lets the
thread run one stretch. The two threads never compute at the same time: the worker waits while the pass thread runs,
and the pass thread waits while the worker decodes. Closing the generator (a cancelled view) ends the pass at its
next stop.

    weights = yield from stepped(model, attention_weights(model, ids))    # a view's passes, in short stretches
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

from core.inside.anatomy import anatomy
from core.inside.forward import Step
from core.work.fair_share import CHAT_STRETCH, Stretch

T = TypeVar("T")
Stop = Callable[[], float]  # called in the pass thread where it stops; returns the seconds the next stretch may run
# How the first stretch runs, before the worker has sent one (it sends one with every step): short, as if chats ran,
# on torch's default threads, as when none do (a view's numbers then depend only on whether chats ran meanwhile).
STRETCH = Stretch(CHAT_STRETCH.seconds)
_HERE = threading.local()  # in a pass thread inside `sublayer_stops`: its `due` (see `pause_point`)


class _Closed(Exception):
    """Raised in the pass thread at its next stop once the generator is closed."""


def in_steps(work: Callable[[Stop], T], step: Step | Callable[[], Step]) -> Generator[Step, Stretch | None, T]:
    """Run `work(stop)` in a thread of its own, one stretch between two `stop()` calls per step of this generator,
    which yields `step` (or what it returns: the progress so far) after each stretch and returns `work`'s result.
    A `Stretch` sent to the generator is how the next stretches run: `stop()` returns its seconds, and the thread
    computes on its number of torch threads."""
    go, stopped = threading.Semaphore(0), threading.Semaphore(0)
    outcome: dict[str, Any] = {}
    closed = threading.Event()
    stretch = [STRETCH]
    default_threads = torch.get_num_threads()

    def resume() -> float:
        """In the pass thread, as a stretch begins (torch's thread count is the calling thread's own)."""
        threads = stretch[0].threads or default_threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return stretch[0].seconds

    def stop() -> float:
        stopped.release()
        go.acquire()
        if closed.is_set():
            raise _Closed
        return resume()

    def run() -> None:
        go.acquire()
        try:
            if not closed.is_set():
                resume()
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
            sent = yield step() if callable(step) else step
            if sent is not None:
                stretch[0] = sent
    finally:
        if not outcome.get("done"):
            closed.set()
            go.release()
            thread.join()
    error = outcome.get("error")
    if error is not None and not isinstance(error, _Closed):
        raise error
    return outcome["value"]


def sublayers(model: nn.Module) -> list[nn.Module]:
    """The leaf modules of the decoder layers and the LM head: where a pass may stop."""
    parts = anatomy(model)
    return [m for part in [*parts.layers, parts.lm_head] for m in part.modules() if not any(m.children())]


@contextlib.contextmanager
def sublayer_stops(model: nn.Module, stop: Stop, stretch_s: float | None = None) -> Iterator[Stop]:
    """Inside the block, this thread's forward calls stop before a sublayer (`sublayers`) and a backward pass through
    them at a sublayer's output gradient, once the stretch since the thread last resumed has run its length: what
    `stop()` returned (STRETCH's seconds at first), or `stretch_s` seconds where given (0: at every one). Code
    within a sublayer stops likewise at its `pause_point()` calls. Gives the stop to call for a pause of the
    caller's own, which starts a new stretch too. Hooks belong to the module: each one keeps its own thread's calls
    only."""
    me = threading.get_ident()
    length = [STRETCH.seconds if stretch_s is None else stretch_s]
    resumed = [time.perf_counter()]

    def stop_now() -> float:
        granted = stop()
        if stretch_s is None:
            length[0] = granted
        resumed[0] = time.perf_counter()
        return granted

    def due() -> None:
        if time.perf_counter() - resumed[0] >= length[0]:
            stop_now()

    def before(_module: nn.Module, _args: Any) -> None:
        if threading.get_ident() == me:
            due()

    def after(_module: nn.Module, _args: Any, out: Any) -> None:
        hidden = out[0] if isinstance(out, tuple) else out
        if threading.get_ident() == me and isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            hidden.register_hook(lambda grad: due())

    hooks = []
    _HERE.due = due
    try:
        for m in sublayers(model):  # hundreds of hooks: setting them up may stop too
            hooks += (m.register_forward_pre_hook(before), m.register_forward_hook(after))
            due()
        yield stop_now
    finally:
        _HERE.due = None
        for hook in hooks:
            hook.remove()


def pause_point() -> None:
    """Where a long computation of a view's pass may stop (between the parts of a vocabulary-wide matmul): the pass
    thread stops here once its stretch has run its length; anywhere else (no stepped pass) it does nothing."""
    due = getattr(_HERE, "due", None)
    if due is not None:
        due()


def stepped(model: nn.Module, passes: Generator[Step, None, T]) -> Generator[Step, None, T]:
    """A view's generator of whole passes (`passes`) driven in a pass thread that also stops within them, under
    inference mode as the worker runs views (a pass that needs gradients turns it off for itself)."""
    progress: list[Step] = [(0, 1, "starting")]

    def work(stop: Stop) -> T:
        with torch.inference_mode(), sublayer_stops(model, stop) as pause:
            while True:
                try:
                    progress[0] = next(passes)
                except StopIteration as end:
                    return end.value
                pause()  # the view's own pauses stay pauses

    try:
        return (yield from in_steps(work, lambda: progress[0]))
    finally:
        passes.close()
