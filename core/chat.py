"""The chat engine: one object that every chat request goes through, generating on one dedicated worker thread.

Why one worker thread: all torch work then happens on a single long-lived thread with one warm OpenMP team, and
the web server's threads only wait on events; a request never creates threads. (The common Spaces pattern starts
a new thread per request and polls a TextIteratorStreamer from gradio's thread pool.) One queue in front of the
worker also gives the bounded "busy" behaviour and is the place where batching plugs in.

    >>> engine = ChatEngine(loaded)                                       # doctest: +SKIP
    >>> stream = engine.chat("What is the capital of France?", [], "", GenerationSettings(temperature=0))
    >>> for text in stream: print(text)                                   # cumulative answer text
    >>> stream.stats.stop_reason
    'end of turn'
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from core.errors import BusyError, GenerationError, InvalidInputError
from core.models import LoadedModel
from core.prompt import Prompt, PromptBuilder

log = logging.getLogger(__name__)

END_OF_TURN, LENGTH, STOPPED, ERROR = "end of turn", "length", "stopped", "error"


@dataclass
class GenerationSettings:
    """Sampling controls; temperature 0 means greedy. The same seed and settings give the same answer."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None

    def validated(self, max_new_tokens_limit: int) -> GenerationSettings:
        checks = [
            (0 <= self.temperature <= 5, f"temperature must be between 0 and 5 (got {self.temperature})"),
            (0 < self.top_p <= 1, f"top-p must be in (0, 1] (got {self.top_p})"),
            (self.top_k >= 0, f"top-k must be 0 (off) or more (got {self.top_k})"),
            (0 < self.repetition_penalty <= 5, f"repetition penalty must be in (0, 5] (got {self.repetition_penalty})"),
            (1 <= self.max_new_tokens <= max_new_tokens_limit,
             f"max new tokens must be between 1 and {max_new_tokens_limit} (got {self.max_new_tokens})"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(message)
        return self

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens,
                                  "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


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

    def summary(self) -> str:
        parts = [f"{self.prompt_tokens} prompt tokens", f"{self.generated_tokens} generated"]
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

    def __init__(self, prompt: Prompt, settings: GenerationSettings, tokenizer: Any, interval: float = 0.05):
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

    # -- worker side -------------------------------------------------------------------------------------------
    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()
            waiters = list(self._waiters)
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
                          stop_reason=self.stop_reason, dropped_turns=self.prompt.dropped_turns)
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
        last_sent = -1
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
        event = asyncio.Event()
        with self._cond:
            self._waiters.append((loop, event))
        last_sent = -1
        try:
            while not self.done:
                if len(self._tokens) == last_sent:
                    event.clear()
                    if len(self._tokens) == last_sent and not self.done:
                        await event.wait()
                    continue
                last_sent = len(self._tokens)
                yield self.text
                await asyncio.sleep(self.interval)
            self._raise_if_failed()
            yield self.text
        finally:
            with self._cond:
                self._waiters.remove((loop, event))
            if not self.done:
                self.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request has finished (in any way)."""
        return self._done.wait(timeout)


class _CancelCriteria(StoppingCriteria):
    """Read before every decoding step: stops generation as soon as the request is cancelled."""

    def __init__(self, stream: ChatStream) -> None:
        self.stream = stream

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.stream.cancelled, dtype=torch.bool, device=input_ids.device)


class _TokenSink(BaseStreamer):
    """Receives generated token ids from `model.generate` (the first call carries the prompt and is skipped)."""

    def __init__(self, stream: ChatStream) -> None:
        self.stream = stream
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.stream._push(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class ChatEngine:
    """Owns the model's generation: prompts, a bounded request queue and the worker thread."""

    def __init__(self, loaded: LoadedModel, max_queue: int = 16, max_new_tokens_limit: int = 2048,
                 max_input_chars: int = 50_000) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.prompts = PromptBuilder(loaded.tokenizer)
        self.max_queue = max_queue
        self.max_new_tokens_limit = max_new_tokens_limit
        self.max_input_chars = max_input_chars
        self.stop_ids = self._stop_ids(loaded)
        self._queue: queue.Queue[ChatStream | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="token-lab-generate", daemon=True)
        self._worker.start()

    @staticmethod
    def _stop_ids(loaded: LoadedModel) -> list[int]:
        """generation_config's eos ids (Phi-3: 32000, 32001, 32007) plus the tokenizer's eos, never replacing them."""
        ids: list[int] = []
        for source in (getattr(loaded.model.generation_config, "eos_token_id", None),
                       getattr(loaded.model.config, "eos_token_id", None), loaded.tokenizer.eos_token_id):
            for i in source if isinstance(source, (list, tuple)) else [source]:
                if i is not None and int(i) not in ids:
                    ids.append(int(i))
        return ids

    # -- requests ----------------------------------------------------------------------------------------------
    def prompt(self, message: str, history: Sequence[Any] | None, system_prompt: str = "",
               max_new_tokens: int = 256) -> Prompt:
        """The exact prompt the model would receive for `message` after `history` (oldest turns dropped to fit)."""
        if not isinstance(message, str) or not message.strip():
            raise InvalidInputError("Type a message first.")
        total = len(message) + len(system_prompt or "")
        if total > self.max_input_chars:
            raise InvalidInputError(f"The message is {total:,} characters; the limit is {self.max_input_chars:,}.")
        return self.prompts.build(message, history, system_prompt or "", max_new_tokens,
                                  self.loaded.context_length)

    def submit(self, prompt: Prompt, settings: GenerationSettings) -> ChatStream:
        """Queue a prompt for generation; BusyError when the queue is full."""
        settings = settings.validated(self.max_new_tokens_limit)
        if len(prompt.ids) + settings.max_new_tokens > self.loaded.context_length:
            raise InvalidInputError(f"{len(prompt.ids)} prompt tokens + {settings.max_new_tokens} new tokens exceed "
                                    f"the context of {self.loaded.context_length}.")
        stream = ChatStream(prompt, settings, self.tokenizer)
        with self._lock:
            if self._pending >= self.max_queue:
                raise BusyError(f"The server is busy ({self._pending} requests in progress). Try again in a moment.")
            self._pending += 1
        self._queue.put(stream)
        return stream

    def chat(self, message: str, history: Sequence[Any] | None, system_prompt: str = "",
             settings: GenerationSettings | None = None) -> ChatStream:
        settings = (settings or GenerationSettings()).validated(self.max_new_tokens_limit)
        return self.submit(self.prompt(message, history, system_prompt, settings.max_new_tokens), settings)

    @property
    def pending(self) -> int:
        return self._pending

    def close(self) -> None:
        self._queue.put(None)

    # -- worker ------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            stream = self._queue.get()
            if stream is None:
                return
            try:
                if stream.cancelled:
                    stream.started = time.perf_counter()
                    stream._finish(STOPPED)
                else:
                    self._generate(stream)
            except Exception as exc:  # surfaced to the caller by the stream, never swallowed
                log.exception("generation failed")
                stream._finish(ERROR, exc)
            finally:
                with self._lock:
                    self._pending -= 1

    def _generate(self, stream: ChatStream) -> None:
        model = self.loaded.model
        device = model.device
        input_ids = torch.tensor([stream.prompt.ids], dtype=torch.long, device=device)
        if stream.settings.seed is not None:
            torch.manual_seed(stream.settings.seed)
        stream.started = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                streamer=_TokenSink(stream),
                stopping_criteria=StoppingCriteriaList([_CancelCriteria(stream)]),
                **stream.settings.generate_kwargs(),
            )
        tokens = stream.token_ids
        if stream.cancelled:
            reason = STOPPED
        elif tokens and tokens[-1] in self.stop_ids:
            reason = END_OF_TURN
        else:
            reason = LENGTH
        stream._finish(reason)

