"""The chat engine: one object that every chat request goes through, generating on one dedicated worker thread.

Why one worker thread: all torch work then happens on a single long-lived thread with one warm OpenMP team, and
the web server's threads only wait on events; a request never creates threads. (The common Spaces pattern starts
a new thread per request and polls a TextIteratorStreamer from gradio's thread pool.) One bounded queue in front of
the worker gives the "busy" behaviour, and the worker decodes all running requests together (core/batching.py).

    >>> engine = ChatEngine(loaded)                                       # doctest: +SKIP
    >>> stream = engine.chat("What is the capital of France?", [], "", GenerationSettings(temperature=0))
    >>> for text in stream: print(text)                                   # cumulative answer text
    >>> stream.stats.stop_reason
    'end of turn'
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from core import checks
from core.config import RequestLimits
from core.engine.arrivals import take_burst
from core.engine.batch_decoder import BatchDecoder, Slot, free_memory_bytes, rows_that_fit
from core.engine.heap import HeapTrimmer
from core.engine.prefix_cache import PrefixCache
from core.engine.settings import GenerationSettings
from core.errors import BusyError, GenerationError, InvalidInputError
from core.model.loading import LoadedModel
from core.text.prompt import Prompt, PromptBuilder, check_history, normalize_messages

log = logging.getLogger(__name__)

END_OF_TURN, LENGTH, STOPPED, ERROR = "end of turn", "length", "stopped", "error"
RECENT_REQUESTS = 256  # finished requests whose timings /engine_stats summarises


def _percentile(ordered: list[float], q: float) -> float | None:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else None


@dataclass
class ChatStats:
    """Shown under each answer."""

    prompt_tokens: int
    generated_tokens: int = 0
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    stop_reason: str = ""
    dropped_turns: int = 0
    queued_s: float = 0.0
    cached_prompt_tokens: int = 0  # reused from the prefix cache, not recomputed

    def summary(self) -> str:
        cached = f" ({self.cached_prompt_tokens} reused from cache)" if self.cached_prompt_tokens else ""
        parts = [f"{self.prompt_tokens} prompt tokens{cached}", f"{self.generated_tokens} generated"]
        if self.ttft_s is not None:
            parts.append(f"first token {self.ttft_s:.2f} s")
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:.1f} tok/s")
        parts.append(f"stop: {self.stop_reason or 'running'}")
        if self.dropped_turns:
            parts.append(f"{self.dropped_turns} oldest messages dropped to fit the context")
        return " · ".join(parts)


class ChatStream:
    """One request: iterate (sync or async) for the cumulative answer text; `cancel()` stops it within one step.

    Iteration coalesces updates: it yields at most once per `interval` seconds (plus the final text), however
    fast tokens arrive, so the UI is not flooded with one update per token.
    """

    _ids = itertools.count(1)

    def __init__(self, prompt: Prompt, settings: GenerationSettings, tokenizer: Any, interval: float = 0.1):
        self.id = next(self._ids)
        self.prompt = prompt
        self.settings = settings
        self.interval = interval
        self._tokenizer = tokenizer
        self._tokens: list[int] = []
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.error: BaseException | None = None
        self.created = time.perf_counter()
        self.started: float | None = None
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.stop_reason = ""
        self.cached_tokens = 0  # prompt tokens the engine did not have to recompute

    # -- worker side -------------------------------------------------------------------------------------------
    def _notify(self) -> None:
        """Wake the consumers. An async consumer registers only while it waits and is woken once: the worker does
        not poke the web server's event loop for every token (that steals CPU from decoding on small machines)."""
        with self._cond:
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def _push(self, token_ids: list[int]) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self._tokens.extend(token_ids)
        self._notify()

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        self.stop_reason = reason
        self.error = error
        self.finished_at = time.perf_counter()
        self._done.set()
        self._notify()

    # -- consumer side -----------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the worker to stop; it does so before the next decoding step."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def token_ids(self) -> list[int]:
        return list(self._tokens)

    @property
    def text(self) -> str:
        """The answer so far, without special tokens; a trailing incomplete UTF-8 character is held back."""
        text = self._tokenizer.decode(self._tokens, skip_special_tokens=True)
        return text if self.done else text.rstrip("\ufffd")

    @property
    def stats(self) -> ChatStats:
        stats = ChatStats(prompt_tokens=len(self.prompt.ids), generated_tokens=len(self._tokens),
                          stop_reason=self.stop_reason, dropped_turns=self.prompt.dropped_turns,
                          cached_prompt_tokens=self.cached_tokens)
        if self.started is not None:
            stats.queued_s = self.started - self.created
            if self.first_token_at is not None:
                stats.ttft_s = self.first_token_at - self.created
                end = self.finished_at or time.perf_counter()
                if len(self._tokens) > 1 and end > self.first_token_at:
                    stats.tokens_per_s = (len(self._tokens) - 1) / (end - self.first_token_at)
        return stats

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise GenerationError(f"Generation failed: {self.error}") from self.error

    def __iter__(self) -> Iterator[str]:
        last_sent = 0  # nothing is sent before the first token: an empty update would only delay the first token
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda seen=last_sent: self.done or len(self._tokens) != seen, timeout=1.0)
                if self.done:
                    break
                if len(self._tokens) != last_sent:
                    last_sent = len(self._tokens)
                    yield self.text
                    time.sleep(self.interval)
            self._raise_if_failed()
            yield self.text
        finally:
            if not self.done:
                self.cancel()  # the consumer went away (Stop, disconnect, error): stop generating

    async def __aiter__(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        last_sent = 0  # as in __iter__: the first update carries the first token and is sent the moment it exists
        try:
            while not self.done:
                if len(self._tokens) == last_sent:
                    event = asyncio.Event()
                    with self._cond:
                        if len(self._tokens) == last_sent and not self.done:
                            self._waiters.append((loop, event))
                        else:
                            event.set()
                    await event.wait()
                    continue
                last_sent = len(self._tokens)
                yield self.text
                await asyncio.sleep(self.interval)
            self._raise_if_failed()
            yield self.text
        finally:
            if not self.done:
                self.cancel()

    def collect(self) -> str:
        """Consume the stream and return the final answer (raises GenerationError if generation failed)."""
        text = ""
        for text in self:  # noqa: B007  (the last update is the answer)
            pass
        return text

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request has finished (in any way)."""
        return self._done.wait(timeout)


class EngineBase:
    """What every chat engine shares: the prompt rules (message checks, chat template, special-token safety,
    trimming), the server's limits and the bounded count of requests in progress. Subclasses implement `submit`."""

    def __init__(self, loaded: LoadedModel, limits: RequestLimits | None = None) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.prompts = PromptBuilder(loaded.tokenizer)
        self.limits = limits or RequestLimits()
        self.peak_batch = 0  # the most requests generating together so far (shown in benchmarks)
        self.submitted = 0  # requests accepted so far
        self.preparing = 0  # prompts being built right now (off the web server's event loop)
        self.stop_ids = self._stop_ids(loaded)
        self._pending = 0
        self._lock = threading.Lock()
        self._recent: collections.deque[ChatStats] = collections.deque(maxlen=RECENT_REQUESTS)

    @staticmethod
    def _stop_ids(loaded: LoadedModel) -> list[int]:
        """generation_config's eos ids (Phi-3: 32000, 32001, 32007) plus the tokenizer's eos, never replacing them."""
        ids: list[int] = []
        generation_config = getattr(loaded.model, "generation_config", None)  # absent on an embeddings-only model
        for source in (getattr(generation_config, "eos_token_id", None),
                       getattr(loaded.model.config, "eos_token_id", None), loaded.tokenizer.eos_token_id):
            for i in source if isinstance(source, (list, tuple)) else [source]:
                if i is not None and int(i) not in ids:
                    ids.append(int(i))
        return ids

    def prompt(self, message: str, history: Sequence[Any] | None, system_prompt: str = "",
               max_new_tokens: int = 256) -> Prompt:
        """The exact prompt the model would receive for `message` after `history` (oldest turns dropped to fit).

        Everything a request sends is checked against the limits before any of it is tokenized."""
        limits = self.limits
        message = checks.text(message, "The message", limits.max_input_chars, required=True,
                              what="Type a message first.")
        system_prompt = checks.text(system_prompt, "The system prompt", limits.max_input_chars)
        total = len(message) + len(system_prompt)
        if total > limits.max_input_chars:
            raise InvalidInputError(f"The message and the system prompt are {total:,} characters together; the "
                                    f"limit is {limits.max_input_chars:,}.")
        messages = normalize_messages(history)
        check_history(messages, limits.max_history_messages, limits.max_history_chars)
        with self._lock:
            self.preparing += 1
        try:
            return self.prompts.build(message, messages, system_prompt, max_new_tokens, self.loaded.context_length)
        finally:
            with self._lock:
                self.preparing -= 1

    def _reserve(self, prompt: Prompt, settings: GenerationSettings, stream_type: type[ChatStream] = ChatStream):
        """Check a request against the server's limits and take a place for it (every engine's `submit` starts
        here); BusyError when `max_queue` requests are already in progress."""
        settings = settings.validated(self.limits.max_new_tokens)
        if len(prompt.ids) + settings.max_new_tokens > self.loaded.context_length:
            raise InvalidInputError(f"{len(prompt.ids)} prompt tokens + {settings.max_new_tokens} new tokens exceed "
                                    f"the context of {self.loaded.context_length}.")
        stream = stream_type(prompt, settings, self.tokenizer)
        with self._lock:
            if self._pending >= self.limits.max_queue:
                raise BusyError(f"The server is busy ({self._pending} requests in progress). Try again in a moment.")
            self._pending += 1
            self.submitted += 1
        return stream

    def submit(self, prompt: Prompt, settings: GenerationSettings) -> ChatStream:
        raise NotImplementedError

    def chat(self, message: str, history: Sequence[Any] | None, system_prompt: str = "",
             settings: GenerationSettings | None = None) -> ChatStream:
        settings = (settings or GenerationSettings()).validated(self.limits.max_new_tokens)
        return self.submit(self.prompt(message, history, system_prompt, settings.max_new_tokens), settings)

    @property
    def pending(self) -> int:
        return self._pending

    def _release(self, stream: ChatStream) -> None:
        """A finished request gives its place back; its timings join the recent window /engine_stats reports."""
        with self._lock:
            self._pending -= 1
            self._recent.append(stream.stats)

    def stats(self) -> dict[str, Any]:
        """What the engine is doing, for operators and load tests (the /engine_stats API). `recent` covers the last
        RECENT_REQUESTS finished requests, timed inside the server (from submission), so a load test can tell the
        engine's share of a client's wait from the web stack's."""
        with self._lock:
            recent = list(self._recent)
        ttft = sorted(s.ttft_s for s in recent if s.ttft_s is not None)
        queued = sorted(s.queued_s for s in recent)
        return {"engine": type(self).__name__, "requests_in_progress": self._pending,
                "max_queue": self.limits.max_queue, "requests_accepted": self.submitted,
                "peak_batch": self.peak_batch, "prompts_preparing": self.preparing,
                "recent": {"requests": len(recent), "ttft_p50_s": _percentile(ttft, 0.5),
                           "ttft_p95_s": _percentile(ttft, 0.95), "queued_p50_s": _percentile(queued, 0.5),
                           "queued_p95_s": _percentile(queued, 0.95)}}


class ChatEngine(EngineBase):
    """The in-process engine: a bounded request queue and one worker thread that decodes all requests together,
    reusing the keys/values of prompt prefixes it has seen (core/prefix_cache.py; `prefix_cache_mb=0` turns it off).
    """

    def __init__(self, loaded: LoadedModel, limits: RequestLimits | None = None, max_batch: int = 0,
                 prefix_cache_mb: int = 256) -> None:
        super().__init__(loaded, limits)
        # 0 = as many rows as fit: every row could grow to the full context, and an out-of-memory step fails
        # every request in the batch
        self.max_batch = max_batch or rows_that_fit(loaded.model, loaded.context_length,
                                                    free_memory_bytes(loaded.model.device))
        self.prefix_cache = PrefixCache(prefix_cache_mb << 20) if prefix_cache_mb > 0 else None
        self.heap = HeapTrimmer()  # the worker returns freed heap pages to the system now and then
        self._queue: queue.Queue[ChatStream | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="token-lab-generate", daemon=True)
        self._worker.start()
        atexit.register(self.close)

    def stats(self) -> dict[str, Any]:
        stats = super().stats() | {"max_batch": self.max_batch, "heap_trims": self.heap.trims}
        cache = self.prefix_cache
        if cache is not None:
            s = cache.stats
            stats["prefix_cache"] = {
                "sequences": len(cache), "bytes": cache.bytes, "max_bytes": cache.max_bytes,
                "lookups": s.lookups, "hits": s.hits,
                "reused_token_share": round(s.reused_share, 4),
            }
        return stats

    def submit(self, prompt: Prompt, settings: GenerationSettings) -> ChatStream:
        """Queue a prompt for generation; BusyError when the queue is full."""
        stream = self._reserve(prompt, settings)
        self._queue.put(stream)
        return stream

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
    def _finish(self, stream: ChatStream, reason: str, error: BaseException | None = None) -> None:
        stream._finish(reason, error)
        self._release(stream)

    def _admit(self, decoder: BatchDecoder, streams: list[ChatStream]) -> list[tuple[ChatStream, Slot]]:
        """Prefill new requests together and sample their first tokens; returns the (stream, row) pairs."""
        now = time.perf_counter()
        admitted = []
        for stream in streams:
            stream.started = now
            if stream.cancelled:
                self._finish(stream, STOPPED)
                continue
            slot = Slot(prompt_ids=stream.prompt.ids, params=stream.settings,
                        max_new_tokens=stream.settings.max_new_tokens, emit=lambda token, s=stream: s._push([token]))
            admitted.append((stream, slot))
        if not admitted:
            return []
        try:
            with torch.inference_mode():
                decoder.admit([slot for _, slot in admitted])
            for stream, slot in admitted:
                stream.cached_tokens = slot.cached_tokens
        except Exception as exc:
            if len(admitted) > 1:  # find the culprit: prefill each alone
                return [pair for one in admitted for pair in self._admit(decoder, [one[0]])]
            log.exception("prefill failed")
            self._finish(admitted[0][0], ERROR, exc)  # surfaced to the caller by the stream, never swallowed
            return []
        return admitted

    def _settle(self, decoder: BatchDecoder, active: list[tuple[ChatStream, Slot]]) -> list[tuple[ChatStream, Slot]]:
        """Finish the streams whose rows ended; returns the rows still running."""
        running = []
        for stream, slot in active:
            if slot.finish_reason is None:
                running.append((stream, slot))
            else:
                self._finish(stream, slot.finish_reason)
        decoder.prune()
        if len(running) < len(active) and self._queue.empty():  # trimming takes ~25 ms: never while anyone waits
            self.heap.maybe_trim()
        return running

    def _warm_up(self, decoder: BatchDecoder) -> None:
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
        decoder = BatchDecoder(self.loaded.model, self.stop_ids, self.prefix_cache)
        self._warm_up(decoder)
        active: list[tuple[ChatStream, Slot]] = []
        while True:
            waiting = take_burst(self._queue, room=self.max_batch - len(active), wait_for_first=not active)
            if None in waiting:
                return
            if waiting:
                active = self._settle(decoder, active + self._admit(decoder, waiting))
                if len(active) < self.max_batch and not self._queue.empty():
                    continue  # more arrived during that prefill: admit them before decoding, first tokens first
            if not active:
                continue
            self.peak_batch = max(self.peak_batch, len(active))
            for stream, slot in active:
                if stream.cancelled and slot.finish_reason is None:
                    slot.finish_reason = STOPPED
            try:
                with torch.inference_mode():
                    decoder.step()
            except Exception as exc:
                log.exception("decoding step failed")
                for stream, _slot in active:
                    self._finish(stream, ERROR, exc)
                active = []
                decoder.reset()
                continue
            active = self._settle(decoder, active)
