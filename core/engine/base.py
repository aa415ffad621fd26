"""The chat engine contract: what every engine (in-process, remote server, ZeroGPU) does the same way.

The app holds an `Engine` wherever it needs chat; the engine builds the prompt a model receives (so the prompt
inspector shows exactly what is generated from), checks each request against the server's limits before taking a
place for it, and reports what it is doing. How an answer is generated is each engine's own business (`submit`).
"""

from __future__ import annotations

import abc
import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from core import checks
from core.config import RequestLimits
from core.engine.settings import GenerationSettings
from core.engine.stream import ChatStats, ChatStream
from core.errors import BusyError, InvalidInputError, UnavailableError
from core.model.loading import LoadedModel
from core.text.messages import check_history, normalize_messages
from core.text.prompt import Prompt, PromptBuilder
from core.work.progress import Progress

RECENT_REQUESTS = 256  # finished requests whose timings /engine_stats summarises
T = TypeVar("T")


def _percentile(ordered: list[float], q: float) -> float | None:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else None


def stop_token_ids(loaded: LoadedModel) -> list[int]:
    """generation_config's eos ids (Phi-3: 32000, 32001, 32007) plus the tokenizer's eos, never replacing them."""
    ids: list[int] = []
    generation_config = getattr(loaded.model, "generation_config", None)  # absent on an embeddings-only model
    for source in (getattr(generation_config, "eos_token_id", None),
                   getattr(loaded.model.config, "eos_token_id", None), loaded.tokenizer.eos_token_id):
        for i in source if isinstance(source, (list, tuple)) else [source]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


class Engine(abc.ABC):
    """The contract every chat engine keeps, and what they share: the prompt rules (message checks, chat template,
    special-token safety, trimming), the server's limits, the bounded count of requests in progress and their
    recent timings. Subclasses implement `submit`, `describe` and `close`."""

    # True for engines whose requests in flight all generate at once (a remote server, ZeroGPU's calls): their
    # peak batch is the peak in flight. The local engine counts the rows it decodes together instead.
    IN_FLIGHT_IS_BATCH = True

    def __init__(self, loaded: LoadedModel, limits: RequestLimits | None = None) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.prompts = PromptBuilder(loaded.tokenizer)
        self.limits = limits or RequestLimits()
        self.peak_batch = 0  # the most requests generating together so far (shown in benchmarks)
        self.submitted = 0  # requests accepted so far
        self.preparing = 0  # prompts being built right now (off the web server's event loop)
        self.stop_ids = stop_token_ids(loaded)
        self._pending = 0
        self._lock = threading.Lock()
        self._recent: collections.deque[ChatStats] = collections.deque(maxlen=RECENT_REQUESTS)

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

    STREAM: type[ChatStream] = ChatStream  # what a request reads; an engine whose streams carry more says so here

    def _reserve(self, prompt: Prompt, settings: GenerationSettings) -> ChatStream:
        """Check a request against the server's limits and take a place for it (every engine's `submit` starts
        here); BusyError when `max_queue` requests are already in progress."""
        settings = settings.validated(self.limits.max_new_tokens)
        if len(prompt.ids) + settings.max_new_tokens > self.loaded.context_length:
            raise InvalidInputError(f"{len(prompt.ids)} prompt tokens + {settings.max_new_tokens} new tokens exceed "
                                    f"the context of {self.loaded.context_length}.")
        stream = self.STREAM(prompt, settings, self.tokenizer)
        with self._lock:
            if self._pending >= self.limits.max_queue:
                raise BusyError(f"The server is busy ({self._pending} requests in progress). Try again in a moment.")
            self._pending += 1
            self.submitted += 1
            if self.IN_FLIGHT_IS_BATCH:
                self.peak_batch = max(self.peak_batch, self._pending)
        stream.on_finish(self._release)
        return stream

    @abc.abstractmethod
    def submit(self, prompt: Prompt, settings: GenerationSettings) -> ChatStream:
        """Start generating an answer to `prompt`; BusyError when `max_queue` requests are already in progress."""

    @property
    def runner(self) -> str:
        """What computes the tokens here in a word or two (the header, /engine_stats); empty where the engine does
        not compute them itself (a remote server)."""
        return ""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for the status: where chat runs and how."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop serving: end what is in flight and release threads and connections."""

    def inspect(self, fn: Callable[..., T], *args: Any, progress: Progress | None = None) -> T:
        """Run `fn(loaded, *args)`, a read-only use of the model's weights (the Inside tab's views), where this
        engine's model runs, and return its result; a generator `fn` is driven to its end (its return value), and
        what it yields, (done, total, stage), goes to `progress` where the engine can report it. `fn` is a
        module-level function and its arguments and result plain data: ZeroGPU runs it in another process. Engines
        without the weights here say so."""
        raise UnavailableError(f"{type(self).__name__} cannot run computations on the model's weights.")

    def chat(self, message: str, history: Sequence[Any] | None, system_prompt: str = "",
             settings: GenerationSettings | None = None) -> ChatStream:
        settings = (settings or GenerationSettings()).validated(self.limits.max_new_tokens)
        return self.submit(self.prompt(message, history, system_prompt, settings.max_new_tokens), settings)

    def _release(self, stream: ChatStream) -> None:
        """A finished request gives its place back (the stream calls this once, when it finishes); its timings join
        the recent window /engine_stats reports."""
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
                           "queued_p95_s": _percentile(queued, 0.95),
                           "stop_reasons": dict(collections.Counter(s.stop_reason for s in recent))}}
