"""Chat on Hugging Face ZeroGPU: each request generates inside its own `gpu`-decorated call.

ZeroGPU lends a GPU only to a `spaces.GPU` call made while a request is handled, and runs it in a forked worker
process; `core.engine.local.ChatEngine`'s long-lived worker thread never gets one. This engine keeps the same interface
(the `Engine` contract of core/engine/base.py) and the same `ChatStream`s, but each request runs
`generate_ids` (decorated with `core.engine.zerogpu.gpu`) on a helper thread that carries the request's context (ZeroGPU
reads the user's quota from it) and pushes the token ids it yields into the stream. Requests are not batched
together: ZeroGPU schedules each call on its own.

Off ZeroGPU `gpu` changes nothing, so the same code runs (and is tested) on the CPU.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from core.config import RequestLimits
from core.engine.base import Engine
from core.engine.batch_decoder import BatchDecoder, Slot
from core.engine.jobs import finish
from core.engine.sampling import StepLogprobs
from core.engine.settings import GenerationSettings
from core.engine.stream import END_OF_TURN, ERROR, LENGTH, STOPPED, ChatStream
from core.engine.zerogpu import gpu
from core.model.loading import LoadedModel
from core.text.prompt import Prompt
from core.work.progress import Progress

log = logging.getLogger(__name__)

# Models by key: the decorated call receives plain, picklable arguments (ZeroGPU pickles them into its worker,
# which inherits this registry by fork), never the model itself.
_MODELS: dict[int, tuple[torch.nn.Module, list[int]]] = {}
_LOADED: dict[int, LoadedModel] = {}  # the same models with their tokenizers, for inspections
_keys = itertools.count(1)
T = TypeVar("T")
INSPECT_DURATION = 30  # seconds of GPU one inspection may hold


@gpu
def generate_ids(model_key: int, prompt_ids: list[int], params: GenerationSettings,
                 max_new_tokens: int) -> Iterator[tuple[list[int], list[StepLogprobs]]]:
    """Yield the new token ids of one answer, a step at a time, with their log-probability records (when
    `params.top_logprobs` asks for them); the last ids end with a stop id or the limit."""
    model, stop_ids = _MODELS[model_key]
    decoder = BatchDecoder(model, stop_ids)
    new: list[int] = []
    slot = Slot(prompt_ids=prompt_ids, params=params, max_new_tokens=max_new_tokens, emit=new.append)
    with torch.inference_mode():
        decoder.admit([slot])
        while True:
            yield list(new), list(slot.logprobs)
            new.clear()
            slot.logprobs.clear()
            if slot.finish_reason is not None:
                return
            decoder.step()


@gpu(duration=INSPECT_DURATION)
def inspect_on_gpu(model_key: int, fn: Callable[..., T], args: tuple) -> T:
    """`fn(loaded, *args)` inside a GPU call (fn is module-level, so it pickles by name into ZeroGPU's worker)."""
    return finish(fn(_LOADED[model_key], *args))


class ZeroGPUChatEngine(Engine):
    """Generates each request inside a `gpu` call, from a helper thread that carries the request's context."""

    def __init__(self, loaded: LoadedModel, limits: RequestLimits | None = None) -> None:
        super().__init__(loaded, limits)  # each request: its own GPU call
        self._key = next(_keys)
        _MODELS[self._key] = (loaded.model, self.stop_ids)
        _LOADED[self._key] = loaded

    def submit(self, prompt: Prompt, settings: GenerationSettings) -> ChatStream:
        """Start generating `prompt`; BusyError when `max_queue` requests are already in flight."""
        stream = self._reserve(prompt, settings)
        context = contextvars.copy_context()  # the request's context: ZeroGPU identifies the user from it
        threading.Thread(target=context.run, args=(self._generate, stream), name=f"token-lab-zerogpu-{stream.id}",
                         daemon=True).start()
        return stream

    def _generate(self, stream: ChatStream) -> None:
        stream.started = time.perf_counter()
        reason, error = END_OF_TURN, None
        steps = None
        try:
            steps = generate_ids(self._key, stream.prompt.ids, stream.settings,
                                 stream.settings.max_new_tokens)
            for ids, records in steps:
                stream.logprobs.extend(records)
                if ids:
                    stream.push(ids)
                if stream.cancelled:
                    reason = STOPPED
                    break
            else:
                last = stream.token_ids[-1] if stream.token_ids else None
                reason = END_OF_TURN if last in self.stop_ids else LENGTH
        except Exception as exc:  # surfaced to the caller by the stream, never swallowed
            log.exception("generation failed")
            reason, error = ERROR, exc
        finally:
            if steps is not None:
                steps.close()  # on ZeroGPU this ends the GPU call early
            stream.finish(reason, error)

    def inspect(self, fn: Callable[..., T], *args: Any, progress: Progress | None = None) -> T:
        """Run `fn(loaded, *args)` in a GPU call of its own (the Inside tab's views); its progress stays there."""
        return inspect_on_gpu(self._key, fn, args)

    @property
    def runner(self) -> str:
        return f"torch {self.loaded.dtype} (ZeroGPU)"

    def describe(self) -> str:
        return "chat runs on ZeroGPU: each answer in its own GPU call"

    def close(self) -> None:
        _MODELS.pop(self._key, None)
        _LOADED.pop(self._key, None)
