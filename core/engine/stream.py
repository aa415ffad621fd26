"""One chat request as its consumer sees it: the answer streaming in, its stop reason, and its timings.

An engine creates a ChatStream for each request it accepts, `push`es token ids into it from whatever thread
generates them, and `finish`es it once (with a stop reason, and the error when one occurred). The consumer (a web
request, a test) iterates it, synchronously or asynchronously, for the cumulative answer text, and may `cancel()`
it; the engine stops before its next decoding step:

    stream = engine.chat("What is the capital of France?", [], "", GenerationSettings(temperature=0))
    for text in stream: print(text)
    stream.stop_reason
    # 'end of turn'
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from core.engine.logprobs import TokenLogprob, openai_logprobs
from core.engine.sampling import StepLogprobs
from core.engine.settings import GenerationSettings
from core.errors import GenerationError
from core.text.prompt import Prompt

# Why a request ended: the model's end-of-turn token, the max_new_tokens limit, the user's Stop (or a client that went
# away), or an error the stream carries.
END_OF_TURN, LENGTH, STOPPED, ERROR = "end of turn", "length", "stopped", "error"


@dataclass
class ChatStats:
    """A request's numbers: shown under each answer, and summarised by /engine_stats."""

    prompt_tokens: int
    generated_tokens: int = 0
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    stop_reason: str = ""
    dropped_turns: int = 0
    queued_s: float = 0.0
    cached_prompt_tokens: int = 0  # reused from the prefix cache, not recomputed


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
        self._finish_lock = threading.Lock()
        self._on_finish: list[Callable[[ChatStream], None]] = []
        self.error: BaseException | None = None
        self.created = time.perf_counter()
        self.started: float | None = None
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.stop_reason = ""
        self.cached_tokens = 0  # prompt tokens the engine did not have to recompute
        # when the request asked for log-probabilities (settings.top_logprobs): one record per token, appended by
        # the engine before the token is pushed
        self.logprobs: list[StepLogprobs] = []
        self.logprobs_note = ""  # why an answer that asked for log-probabilities has none (a server without them)

    # -- the engine's side ----------------------------------------------------------------------------------------
    def _notify(self) -> None:
        """Wake the consumers. An async consumer registers only while it waits and is woken once: the worker does
        not poke the web server's event loop for every token (that steals CPU from decoding on small machines)."""
        with self._cond:
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def push(self, token_ids: list[int]) -> None:
        """New answer tokens (the engine's worker calls this; consumers are woken)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self._tokens.extend(token_ids)
        self._notify()

    def finish(self, reason: str, error: BaseException | None = None) -> bool:
        """End the request with a stop reason (and the error, for ERROR). Idempotent: only the first call counts,
        and it alone runs the `on_finish` callbacks (the engine gives the request's place back there); returns
        whether this call finished it."""
        with self._finish_lock:
            if self._done.is_set():
                return False
            self.stop_reason = reason
            self.error = error
            self.finished_at = time.perf_counter()
            self._done.set()
        self._notify()
        for callback in self._on_finish:
            callback(self)
        return True

    def on_finish(self, callback: Callable[[ChatStream], None]) -> None:
        """Call `callback(stream)` once, when the request finishes."""
        self._on_finish.append(callback)

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

    def answer_logprobs(self) -> list[TokenLogprob] | None:
        """Each answer token so far with its log-probability and the most likely tokens at its step (OpenAI's
        `logprobs.content`; special tokens left out, as in the text), or None when the request did not ask."""
        if self.settings.top_logprobs is None:
            return None
        return openai_logprobs(self.logprobs[:len(self._tokens)], self._tokenizer)

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
