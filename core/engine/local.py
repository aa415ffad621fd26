"""The chat engine: one object that every chat request goes through, generating on one dedicated worker thread.

Why one worker thread: all torch work then happens on a single long-lived thread with one warm OpenMP team, and
the web server's threads only wait on events; a request never creates threads. (The common Spaces pattern starts
a new thread per request and polls a TextIteratorStreamer from gradio's thread pool.) One bounded queue in front of
the worker gives the "busy" behaviour, and the worker decodes all running requests together
(core/engine/batch_decoder.py).

    engine = ChatEngine(loaded)
    stream = engine.chat("What is the capital of France?", [], "", GenerationSettings(temperature=0))
    for text in stream: print(text)                                   # cumulative answer text
    stream.stats.stop_reason
    # 'end of turn'
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from core.config import DEFAULTS, RequestLimits
from core.engine import lean_step
from core.engine.arrivals import take_burst
from core.engine.base import Engine
from core.engine.batch_decoder import BatchDecoder, Decoder, Slot
from core.engine.capacity import free_memory_bytes, rows_that_fit
from core.engine.heap import HeapTrimmer
from core.engine.jobs import WAKE, InspectionJobs, finish
from core.engine.lean_decoder import LeanBatchDecoder
from core.engine.onnx_decoder import OnnxBatchDecoder
from core.engine.onnx_model import OnnxModel
from core.engine.prefix_cache import PrefixCache
from core.engine.settings import GenerationSettings
from core.engine.stream import ERROR, STOPPED, ChatStream
from core.model.loading import LoadedModel
from core.model.onnx_export import PRECISION
from core.text.prompt import Prompt
from core.work.fair_share import POLL_S, FairShare
from core.work.progress import Progress

log = logging.getLogger(__name__)
T = TypeVar("T")
Running = tuple[ChatStream, Slot]  # a request and its row in the batch


@dataclass
class PrefillGroup:
    """Requests that arrived together, their prompts being read a chunk per turn of the worker's loop."""

    prefill: Any  # the decoder's own layout (Prefill, OnnxPrefill)
    pairs: list[Running]


class ChatEngine(Engine):
    """The in-process engine: a bounded request queue and one worker thread that decodes all requests together,
    reusing the keys/values of prompt prefixes it has seen (core/engine/prefix_cache.py; `prefix_cache_mb=0` turns it
    off)."""

    IN_FLIGHT_IS_BATCH = False  # the worker counts the rows it decodes together

    def __init__(self, loaded: LoadedModel, limits: RequestLimits | None = None, max_batch: int = 0,
                 prefix_cache_mb: int = DEFAULTS.prefix_cache_mb, prefill_chunk: int = DEFAULTS.prefill_chunk,
                 onnx: OnnxModel | None = None,
                 onnx_note: str = "", share: FairShare | None = None) -> None:
        super().__init__(loaded, limits)
        self.share = share or FairShare()  # how much of the time inspections take while chats run
        self.onnx, self.onnx_note = onnx, onnx_note  # the converted model when chat runs on ONNX Runtime
        self.prefill_chunk = prefill_chunk if prefill_chunk > 0 else None  # None: every prompt in one pass
        # 0 = as many rows as fit: every row could grow to the full context, and an out-of-memory step fails
        # every request in the batch
        self.max_batch = max_batch or rows_that_fit(loaded.model, loaded.context_length,
                                                    free_memory_bytes(loaded.model.device))
        self.prefix_cache = PrefixCache(prefix_cache_mb << 20) if prefix_cache_mb > 0 else None
        # the lean step where it computes the same bits as the model's forward, in less time per token
        self.decoder_class = LeanBatchDecoder if lean_step.supports(loaded.model) else BatchDecoder
        self.heap = HeapTrimmer()  # the worker returns freed heap pages to the system now and then
        self._queue: queue.Queue[ChatStream | object | None] = queue.Queue()
        self._jobs = InspectionJobs(wake=lambda: self._queue.put(WAKE))
        self._worker = threading.Thread(target=self._run, name="token-lab-generate", daemon=True)
        self._worker.start()
        atexit.register(self.close)

    def stats(self) -> dict[str, Any]:
        stats = super().stats() | {"runner": self.runner, "max_batch": self.max_batch, "heap_trims": self.heap.trims,
                                   "inspections": self._jobs.stats()}
        cache = self.prefix_cache
        if cache is not None:
            s = cache.stats
            stats["prefix_cache"] = {
                "sequences": len(cache), "bytes": cache.bytes, "max_bytes": cache.max_bytes,
                "lookups": s.lookups, "hits": s.hits,
                "reused_token_share": round(s.reused_share, 4),
            }
        return stats

    @property
    def runner(self) -> str:
        """What computes the chat's tokens: `onnx int8` (ONNX Runtime) or `torch float32` (the loaded weights)."""
        return f"onnx {PRECISION}" if self.onnx is not None else f"torch {self.loaded.dtype}"

    def submit(self, prompt: Prompt, settings: GenerationSettings) -> ChatStream:
        """Queue a prompt for generation; BusyError when the queue is full."""
        stream = self._reserve(prompt, settings)
        self._queue.put(stream)
        return stream

    def inspect(self, fn: Callable[..., T], *args: Any, progress: Progress | None = None) -> T:
        """Run `fn(loaded, *args)` on the worker between two decoding steps, sharing the model with the running chats
        (core/engine/jobs.py); a generator `fn` runs one step per decoding step (as the fair share allows), and its
        place in line and its steps are reported to `progress`."""
        if threading.current_thread() is self._worker:
            return finish(fn(self.loaded, *args))
        return self._jobs.run(lambda: fn(self.loaded, *args), alive=self._worker.is_alive, progress=progress)

    def describe(self) -> str:
        cache = f", prefix cache {self.prefix_cache.max_bytes >> 20} MB" if self.prefix_cache is not None else ""
        if self.onnx is not None:
            runner = f" through {self.onnx_note}"
        elif self.decoder_class is LeanBatchDecoder:
            runner = f" in {self.loaded.dtype} (lean decoding step, static KV cache)"
        else:
            runner = f" in {self.loaded.dtype} (transformers forward)"
        return (f"chat runs in-process on {self.loaded.device}{runner}: up to {self.max_batch} chats decoded "
                f"together{cache}")

    def close(self, timeout: float = 60.0) -> None:
        """Stop the worker after its current forward pass, waiting for it up to `timeout` seconds. Also runs at
        interpreter exit: a daemon thread still inside a torch op when Python finalizes aborts the process
        ("terminate called without an active exception", exit status 134). The wait is generous because on a busy
        machine one forward pass (the start-up warm-up, a long prefill) can take seconds."""
        atexit.unregister(self.close)
        self._queue.put(None)
        if self._worker is not threading.current_thread():
            self._worker.join(timeout)

    # -- worker ------------------------------------------------------------------------------------------------
    def _new_decoder(self) -> Decoder:
        if self.onnx is not None:
            return OnnxBatchDecoder(self.onnx, self.stop_ids, self.prefix_cache)
        return self.decoder_class(self.loaded.model, self.stop_ids, self.prefix_cache)

    def _begin(self, decoder: Decoder, streams: list[ChatStream]) -> list[PrefillGroup]:
        """Lay out new requests for prefilling together (none computed yet); a cancelled one ends here."""
        now = time.perf_counter()
        pairs = []
        for stream in streams:
            stream.started = now
            if stream.cancelled:
                stream.finish(STOPPED)
                continue
            slot = Slot(prompt_ids=stream.prompt.ids, params=stream.settings,
                        max_new_tokens=stream.settings.max_new_tokens, emit=lambda token, s=stream: s.push([token]),
                        logprobs=stream.logprobs)  # the stream's own list: a token's record is there before it
            pairs.append((stream, slot))
        if not pairs:
            return []
        try:
            return [PrefillGroup(decoder.begin([slot for _, slot in pairs]), pairs)]
        except Exception as exc:
            log.exception("laying out a prefill failed")
            for stream, _ in pairs:
                stream.finish(ERROR, exc)  # surfaced to the caller by the stream, never swallowed
            return []

    def _feed(self, decoder: Decoder, group: PrefillGroup) -> tuple[list[PrefillGroup], list[Running]]:
        """One chunk of a group's prompts; returns (the groups still to feed, the rows that began decoding)."""
        if all(stream.cancelled for stream, _ in group.pairs):
            for stream, _ in group.pairs:
                stream.finish(STOPPED)
            return [], []
        try:
            with torch.inference_mode():
                done = decoder.prefill(group.prefill, self.prefill_chunk)
        except Exception as exc:
            if len(group.pairs) > 1:  # find the culprit: prefill each alone
                return [one for stream, _ in group.pairs for one in self._begin(decoder, [stream])], []
            log.exception("prefill failed")
            group.pairs[0][0].finish(ERROR, exc)  # surfaced to the caller by the stream, never swallowed
            return [], []
        if not done:
            return [group], []
        for stream, slot in group.pairs:
            stream.cached_tokens = slot.cached_tokens
        return [], group.pairs

    def _settle(self, decoder: Decoder, active: list[Running]) -> list[Running]:
        """Finish the streams whose rows ended; returns the rows still running."""
        running = []
        for stream, slot in active:
            if slot.finish_reason is None:
                running.append((stream, slot))
            else:
                stream.finish(slot.finish_reason)
        decoder.prune()
        if len(running) < len(active) and self._queue.empty():  # a trim walks the heaps: never while anyone waits
            self.heap.maybe_trim()
        return running

    def _warm_up(self, decoder: Decoder) -> None:
        """Prefill the chat template's opening (its default system prompt) once at start: the first users then
        start from cached keys/values, and the CPU kernels are warm."""
        if self.prefix_cache is None:
            return
        try:
            ids = self.prompts.build("Hello", [], "", 1, self.loaded.context_length).ids
            with torch.inference_mode():
                decoder.admit([Slot(prompt_ids=ids, params=GenerationSettings(temperature=0), max_new_tokens=1,
                                    emit=lambda token: None)])
            decoder.reset()
        except Exception:  # never fatal: requests simply start without a cached prefix
            log.exception("prefix cache warm-up failed")

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._jobs.fail_all()  # inspections still waiting are told the worker stopped

    def _inspect_step(self) -> bool:
        """One step of an inspection if one is waiting and the fair share allows it now; False when none ran.
        Cancelled ones are dropped first, turn or no turn."""
        self._jobs.drop_cancelled()
        if not self._jobs.busy or not self.share.try_begin():
            return False
        try:
            self._jobs.step(self.share.stretch())
        finally:
            self.share.end()
        return True

    def _serve(self) -> None:
        """The worker's loop: each turn runs one step of an inspection (while chats run, as often as the fair share
        allows), one chunk of every prompt being prefilled, then one decoding step of every running row, so a long
        prompt never stalls the chats already streaming."""
        decoder = self._new_decoder()
        self._warm_up(decoder)
        active: list[Running] = []
        groups: list[PrefillGroup] = []
        admitting = False  # this turn takes in requests that came during a prefill, before the decoding step
        while True:
            self.share.set_chatting(bool(active or groups))
            stepped = not admitting and self._inspect_step()  # a view's step never cuts in before that decoding step
            admitting = False
            idle = not active and not groups
            room = self.max_batch - len(active) - sum(len(group.pairs) for group in groups)
            # idle with an inspection that must wait for another heavy step: look at the queue now and then
            waiting = take_burst(self._queue, room=room, wait_for_first=idle and not self._jobs.busy,
                                 first_wait_s=POLL_S if idle and self._jobs.busy and not stepped else 0.0)
            if None in waiting:
                return
            groups += self._begin(decoder, [item for item in waiting if item is not WAKE])
            if groups:
                self.share.wait_for_step()
            feeding, groups, started = groups, [], []
            for group in feeding:
                still, began = self._feed(decoder, group)
                groups += still
                started += began
            if started:
                active = self._settle(decoder, active + started)
                if len(active) < self.max_batch and not self._queue.empty():
                    admitting = True
                    continue  # more arrived during that prefill: admit them before decoding, first tokens first
            if not active:
                continue
            self.peak_batch = max(self.peak_batch, len(active))
            self.share.wait_for_step()  # an evaluation's batch on another thread has the cores for now
            for stream, slot in active:
                if stream.cancelled and slot.finish_reason is None:
                    slot.finish_reason = STOPPED
            try:
                with torch.inference_mode():
                    decoder.step()
            except Exception as exc:
                log.exception("decoding step failed")
                for stream, _slot in active:
                    stream.finish(ERROR, exc)
                active = []
                decoder.reset()
                continue
            active = self._settle(decoder, active)
