"""Chat through an OpenAI-compatible inference server (vLLM, SGLang, TGI, llama.cpp, `transformers serve`) instead of
in-process.

`RemoteChatEngine` keeps the `Engine` contract of core/engine/base.py (`prompt`, `submit`, `chat`, `stats`,
`describe`, `close`), and its streams are `ChatStream`s: iterate them (sync or async) for the cumulative
answer, `cancel()` them, read `.stats`. Prompts are still built locally with the model's tokenizer, for the prompt
inspector and the context check; the server receives the same (trimmed) messages and applies its own chat template.

The requests go through the `openai` client, the one every OpenAI-compatible server is tested against, so its
streaming format and error bodies are parsed as those servers expect. Why one event-loop thread: every request is one
streaming call on that loop, so Stop cancels the request's task, which closes its HTTP connection at once (even while
the server is silent), and the servers named above stop generating when their client goes away. A web request never
creates a thread.

    engine = RemoteChatEngine(loaded, "http://127.0.0.1:8000/v1", model="microsoft/Phi-3-mini-4k-instruct")
    stream = engine.chat("What is the capital of France?", [], "", GenerationSettings(temperature=0))
    for text in stream: print(text)
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import httpx2
import openai
from openai.types.chat import ChatCompletionChunk

from core.config import RequestLimits
from core.engine.base import Engine
from core.engine.logprobs import TokenLogprob
from core.engine.settings import GenerationSettings
from core.engine.stream import END_OF_TURN, ERROR, LENGTH, STOPPED, ChatStats, ChatStream
from core.errors import (
    BusyError,
    GenerationError,
    InvalidInputError,
    ModelNotReadyError,
    TokenLabError,
    UnavailableError,
)
from core.model.loading import LoadedModel
from core.text.prompt import Prompt
from core.work.progress import Progress

log = logging.getLogger(__name__)

# Sampling fields outside the OpenAI schema: vLLM, SGLang, TGI and llama.cpp accept them; `transformers serve` rejects
# unknown fields (HTTP 422), so after such a refusal they are left out for that server and the request is sent again.
# `repeat_penalty` is llama.cpp's name for the repetition penalty, sent even when it is 1.0: llama-cpp-python's server
# applies 1.1 unless told otherwise, which would change a greedy answer behind the chat's settings.
EXTRA_FIELDS = ("top_k", "repetition_penalty", "repeat_penalty")
FINISH_REASONS = {"stop": END_OF_TURN, "eos_token": END_OF_TURN, "length": LENGTH, "abort": STOPPED}
# Failures of a kept-alive connection the server had just closed: nothing was received, so the request is sent again.
STALE_CONNECTION = (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.WriteError)
ATTEMPTS = 3
LOGPROB_FIELDS = ("logprobs", "top_logprobs")
T = TypeVar("T")


def api_base(url: str) -> str:
    """`http://host:8000`, `.../v1` or `.../v1/chat/completions` all mean the API root `http://host:8000/v1`."""
    base = url.strip().rstrip("/")
    if base.endswith("/chat/completions"):
        base = base[: -len("/chat/completions")]
    if not base.endswith("/v1"):
        base += "/v1"
    if not base.startswith(("http://", "https://")):
        raise InvalidInputError(f"--engine-url must start with http:// or https:// (got {url!r})")
    return base


def _token_logprob(entry: Any) -> TokenLogprob:
    """One of a chunk's `logprobs.content` entries, as plain data (`bytes` filled in where a server leaves it out)."""
    def raw(token: str, given: list[int] | None) -> list[int]:
        return list(given) if given is not None else list(token.encode("utf-8"))

    return TokenLogprob(token=entry.token, logprob=float(entry.logprob), bytes=raw(entry.token, entry.bytes),
                        top_logprobs=[{"token": t.token, "logprob": float(t.logprob), "bytes": raw(t.token, t.bytes)}
                                      for t in entry.top_logprobs or []])


def _server_message(body: object) -> str:
    """The human part of an error body as the client decoded it: FastAPI's `detail`, OpenAI's `error.message`,
    TGI's `error`, or the text."""
    if isinstance(body, dict):
        for key in ("detail", "error", "message"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value
            if value:
                return str(value)[:300]
        return json.dumps(body)[:300]
    return str(body or "").strip()[:300] or "(empty body)"


class RemoteChatStream(ChatStream):
    """A ChatStream fed with text deltas from a server instead of token ids from the local worker.

    `_tokens` (the base class's change counter) gets one entry per received chunk; `text` joins the chunks;
    `token_ids` are the answer tokenized locally; `stats` prefer the server's token counts (`usage`).
    """

    def __init__(self, prompt: Prompt, settings: GenerationSettings, tokenizer: Any, interval: float = 0.1):
        super().__init__(prompt, settings, tokenizer, interval)
        self._pieces: list[str] = []
        self.usage: dict[str, int] = {}
        self.received_logprobs: list[TokenLogprob] = []  # as the server sent them, when the request asked
        self._cancel_task: Callable[[], None] | None = None  # set by the engine once the request's task exists

    def push_text(self, delta: str) -> None:
        """A piece of the answer's text, as the server sent it."""
        self._pieces.append(delta)
        self.push([len(self._pieces)])

    def cancel(self) -> None:
        """Stop now: the request's task is cancelled, which closes its HTTP stream (the server then stops)."""
        super().cancel()
        if self._cancel_task is not None:
            self._cancel_task()

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def answer_logprobs(self) -> list[TokenLogprob] | None:
        """The log-probabilities the server sent (OpenAI's shape), or None when the request did not ask."""
        return None if self.settings.top_logprobs is None else list(self.received_logprobs)

    @property
    def token_ids(self) -> list[int]:
        """The answer tokenized locally (the server sends text): equal to the server's ids for ordinary text."""
        text = self.text
        return self._tokenizer.encode(text, add_special_tokens=False) if text else []

    @property
    def stats(self) -> ChatStats:
        stats = super().stats
        stats.prompt_tokens = self.usage.get("prompt_tokens") or stats.prompt_tokens
        stats.generated_tokens = self.usage.get("completion_tokens") or len(self.token_ids)
        stats.tokens_per_s = None
        if self.first_token_at is not None and stats.generated_tokens > 1:
            end = self.finished_at or time.perf_counter()
            if end > self.first_token_at:
                stats.tokens_per_s = (stats.generated_tokens - 1) / (end - self.first_token_at)
        return stats

    def _raise_if_failed(self) -> None:
        if isinstance(self.error, TokenLabError):
            raise self.error  # already a message for people ("cannot reach the server at ...")
        super()._raise_if_failed()


class _Resend(Exception):
    """The request may be sent again: the server refused the extra sampling fields, or a kept-alive connection
    failed before anything was received. `error` is what to report if no attempt is left."""

    def __init__(self, error: openai.OpenAIError) -> None:
        super().__init__(str(error))
        self.error = error


class RemoteChatEngine(Engine):
    """Sends each chat request to an OpenAI-compatible `/v1/chat/completions`, streaming."""

    STREAM = RemoteChatStream  # its text arrives as text, its logprobs in OpenAI's shape

    def __init__(self, loaded: LoadedModel, url: str, model: str | None = None, limits: RequestLimits | None = None,
                 timeout: float = 120.0, api_key: str | None = None) -> None:
        super().__init__(loaded, limits)
        self.base_url = api_base(url)
        self.model_name = model
        self.timeout = timeout
        self.extras_supported: bool | None = None  # None until the server has accepted or refused top_k etc.
        self.logprobs_supported: bool | None = None  # likewise for logprobs / top_logprobs
        self._tasks: set[asyncio.Task] = set()
        self._loop = asyncio.new_event_loop()
        # The key is always given: left out, the client would send OPENAI_API_KEY from the environment to this server.
        # No retries inside the client: the engine decides what is worth sending again.
        self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key or "EMPTY", max_retries=0,
                                          timeout=openai.Timeout(timeout, connect=10.0))
        self._thread = threading.Thread(target=self._loop.run_forever, name="token-lab-remote", daemon=True)
        self._thread.start()

    # -- requests ----------------------------------------------------------------------------------------------
    def submit(self, prompt: Prompt, settings: GenerationSettings) -> RemoteChatStream:
        """Start a request; BusyError when `max_queue` requests are already in flight."""
        if self._loop.is_closed():
            raise ModelNotReadyError("The chat engine is closed.")
        stream = cast(RemoteChatStream, self._reserve(prompt, settings))
        self._loop.call_soon_threadsafe(self._start, stream)
        return stream

    def _start(self, stream: RemoteChatStream) -> None:
        """On the loop thread: one task per request; a task cancelled before it ran still finishes its stream."""
        task = self._loop.create_task(self._serve(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _t: stream.finish(STOPPED))  # a no-op when _serve finished it
        stream._cancel_task = lambda: None if self._loop.is_closed() else self._loop.call_soon_threadsafe(task.cancel)
        if stream.cancelled:  # cancelled between submit and now
            task.cancel()

    def close(self) -> None:
        """Cancel what is in flight, close the connections and stop the loop thread."""
        if self._loop.is_closed():
            return

        async def shutdown() -> None:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._client.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def inspect(self, fn: Callable[..., T], *args: Any, progress: Progress | None = None) -> T:
        raise UnavailableError(f"This needs the model's weights, and chat runs on the inference server at "
                               f"{self.base_url}: only the tokenizer and the input embeddings are loaded here. Start "
                               f"the app without --engine-url to look inside the model.")

    # -- facts about the server --------------------------------------------------------------------------------
    async def _resolve_model(self) -> str:
        """`model` as given, else the server's first model (vLLM, SGLang and TGI list what they serve)."""
        if self.model_name:
            return self.model_name
        page = await self._client.models.list()
        models = [m.id for m in page.data or [] if getattr(m, "id", None)]
        if not models:
            raise ModelNotReadyError(f"The inference server at {self.base_url} lists no models; "
                                     f"pass --engine-model (env ENGINE_MODEL).")
        self.model_name = models[0]
        return self.model_name

    async def _answers(self, timeout: float) -> str:
        """'reachable', or the HTTP status the server answers with: its model list, else `/health` (some servers
        list models badly; all have `/health`)."""
        client = self._client.with_options(timeout=timeout)
        closing = {"Connection": "close"}  # a probe that failed must not leave a broken socket in the pool
        try:
            await client.models.list(extra_headers=closing)
            return "reachable"
        except (openai.APIStatusError, openai.APIConnectionError):
            pass
        try:
            await client.get(f"{self.base_url.removesuffix('/v1')}/health", cast_to=httpx2.Response,
                             options={"headers": closing})
            return "reachable"
        except openai.APIStatusError as exc:
            return f"answers HTTP {exc.status_code}"

    def describe(self, timeout: float = 5.0) -> str:
        """One line for the status: the server, its model, and whether it answers right now."""
        async def probe() -> str:
            try:
                model = await self._resolve_model()
                return f"chat runs on {self.base_url} (model {model}, {await self._answers(timeout)})"
            except (openai.OpenAIError, TokenLabError) as exc:
                reason = exc if isinstance(exc, TokenLabError) else self._explain(exc)
                return f"chat runs on {self.base_url} (model {self.model_name or 'to be asked'}); now: {reason}"

        return asyncio.run_coroutine_threadsafe(probe(), self._loop).result(timeout=timeout + 5)

    # -- one request, on the loop thread ------------------------------------------------------------------------
    def _arguments(self, stream: RemoteChatStream, model: str, extras: bool) -> dict[str, Any]:
        """The `chat.completions.create` arguments; top_k and repetition_penalty only where they change something,
        repeat_penalty always (see EXTRA_FIELDS) unless the server refused extra fields."""
        s = stream.settings
        arguments: dict[str, Any] = {"model": model, "messages": stream.prompt.messages, "stream": True,
                                     "stream_options": {"include_usage": True}, "max_tokens": s.max_new_tokens,
                                     "temperature": s.temperature, "top_p": s.top_p}
        if s.seed is not None:
            arguments["seed"] = s.seed
        if s.top_logprobs is not None and self.logprobs_supported is not False:
            arguments["logprobs"] = True
            if s.top_logprobs:
                arguments["top_logprobs"] = s.top_logprobs
        extra: dict[str, Any] = {}
        if extras and s.top_k > 0:
            extra["top_k"] = s.top_k
        if extras and s.repetition_penalty != 1.0:
            extra["repetition_penalty"] = s.repetition_penalty
        if extras:
            extra["repeat_penalty"] = s.repetition_penalty
        if extra:
            arguments["extra_body"] = extra
        return arguments

    async def _serve(self, stream: RemoteChatStream) -> None:
        stream.started = time.perf_counter()
        reason, error = END_OF_TURN, None
        try:
            if stream.cancelled:
                reason = STOPPED
                return
            model = await self._resolve_model()
            for attempt in range(ATTEMPTS):
                try:
                    reason = await self._stream(stream, model, extras=self.extras_supported is not False)
                    break
                except _Resend as resend:
                    if attempt == ATTEMPTS - 1:
                        raise resend.error from None
            self._explain_missing_logprobs(stream)
        except asyncio.CancelledError:  # Stop: leaving the response's `async with` closed the connection
            reason = STOPPED
        except TokenLabError as exc:
            reason, error = ERROR, exc
        except openai.OpenAIError as exc:
            reason, error = ERROR, self._explain(exc)
        except Exception as exc:  # a bug: keep the reason visible
            log.exception("remote chat request failed")
            reason, error = ERROR, GenerationError(f"The request to {self.base_url} failed: {exc}")
        finally:
            stream.finish(reason, error)

    async def _stream(self, stream: RemoteChatStream, model: str, extras: bool) -> str:
        """Send the request and feed the stream; returns the stop reason."""
        arguments = self._arguments(stream, model, extras)
        sent = list(arguments.get("extra_body", ()))
        try:
            chunks = await self._client.chat.completions.create(**arguments)
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            if "logprobs" in arguments and any(field in exc.response.text for field in LOGPROB_FIELDS):
                self.logprobs_supported = False
                log.warning("%s refused logprobs; sending requests without them", self.base_url)
                raise _Resend(exc) from None
            if sent and any(field in exc.response.text for field in sent):
                self.extras_supported = False
                log.warning("%s refused %s; sending requests without them", self.base_url, ", ".join(sent))
                raise _Resend(exc) from None
            raise
        except openai.APIConnectionError as exc:
            if isinstance(exc.__cause__, STALE_CONNECTION):
                raise _Resend(exc) from None
            raise
        if sent:
            self.extras_supported = True
        finish = None
        async with chunks:  # closes the HTTP stream however this ends, Stop included
            try:
                async for chunk in chunks:
                    finish = self._apply_chunk(stream, chunk) or finish
            except json.JSONDecodeError as exc:
                raise GenerationError(f"The inference server at {self.base_url} sent something that is not JSON: "
                                      f"{exc.doc[:200]!r}") from None
        if finish is None:
            raise GenerationError(f"The inference server at {self.base_url} ended the answer without saying why "
                                  f"(no finish_reason); it may have crashed.")
        return FINISH_REASONS.get(finish, finish)

    @staticmethod
    def _apply_chunk(stream: RemoteChatStream, chunk: ChatCompletionChunk) -> str | None:
        """One streamed chunk: text delta, usage, finish reason."""
        if chunk.usage:
            stream.usage = {k: v for k, v in chunk.usage.model_dump().items() if isinstance(v, int)}
        finish = None
        for choice in chunk.choices or []:
            content = choice.delta.content if choice.delta else None
            logprobs = choice.logprobs.content if choice.logprobs else None
            if logprobs:  # before the text that carries them, as a local engine records them
                stream.received_logprobs.extend(_token_logprob(entry) for entry in logprobs)
            if content:
                stream.push_text(content)
            finish = choice.finish_reason or finish
        return finish

    def _explain_missing_logprobs(self, stream: RemoteChatStream) -> None:
        """An answer that asked for log-probabilities and got none says why."""
        if stream.settings.top_logprobs is not None and stream.text and not stream.received_logprobs:
            refused = "refused them" if self.logprobs_supported is False else "sent none"
            stream.logprobs_note = (f"The inference server at {self.base_url} {refused}: this answer has no "
                                    f"per-token probabilities. vLLM and SGLang return them; `transformers serve` "
                                    f"does not.")

    # -- errors, in words --------------------------------------------------------------------------------------
    def _explain(self, exc: openai.OpenAIError) -> TokenLabError:
        """The client's exception as a sentence for people; the transport's own exception is its cause."""
        url, cause = self.base_url, exc.__cause__
        if isinstance(exc, openai.APIStatusError):
            return self._http_error(exc.status_code, exc.body)
        if isinstance(exc, openai.APIConnectionError):
            if isinstance(cause, (httpx2.ConnectError, httpx2.ConnectTimeout)):
                return ModelNotReadyError(f"Cannot reach the inference server at {url} "
                                          f"({str(cause) or type(cause).__name__}). Is it running? "
                                          f"(--engine-url / ENGINE_URL)")
            if isinstance(exc, openai.APITimeoutError):
                return GenerationError(f"The inference server at {url} sent nothing for {self.timeout:g} s, so the "
                                       f"request was given up (--engine-timeout).")
            if isinstance(cause, httpx2.RemoteProtocolError):
                return GenerationError(f"The inference server at {url} closed the connection mid-answer ({cause}).")
            detail = cause or exc
            return GenerationError(f"The request to the inference server at {url} failed: "
                                   f"{str(detail) or type(detail).__name__}")
        if isinstance(exc, openai.APIError):  # an error event in the middle of the stream
            return GenerationError(f"The inference server at {url} failed while answering: "
                                   f"{_server_message(exc.body)}")
        return GenerationError(f"The request to the inference server at {url} failed: {exc}")

    def _http_error(self, status: int, body: object) -> TokenLabError:
        message, model = _server_message(body), self.model_name or "?"
        where = f"The inference server at {self.base_url} answered HTTP {status}"
        if status in (401, 403):
            return GenerationError(f"{where} (not allowed): {message}. Set ENGINE_API_KEY if it needs a key.")
        if status == 404:
            return GenerationError(f"{where} (not found): {message}. Check --engine-model ({model!r}) and "
                                   f"--engine-url.")
        if status == 429:
            return BusyError(f"{where} (too many requests): {message}. Try again in a moment.")
        if status == 503:
            return ModelNotReadyError(f"{where} (not ready): {message}. Try again in a moment.")
        return GenerationError(f"{where}: {message}")

    def __repr__(self) -> str:
        return f"RemoteChatEngine({self.base_url!r}, model={self.model_name!r}, pending={self._pending})"
