"""Chat through an OpenAI-compatible inference server (vLLM, SGLang, TGI, `transformers serve`) instead of in-process.

`RemoteChatEngine` has the interface the chat tab uses from `core.engine.local.ChatEngine` (`prompt`, `submit`, `chat`,
`pending`, `max_queue`, `close`), and its streams are `ChatStream`s: iterate them (sync or async) for the cumulative
answer, `cancel()` them, read `.stats`. Prompts are still built locally with the model's tokenizer, for the prompt
inspector and the context check; the server receives the same (trimmed) messages and applies its own chat template.

Why one event-loop thread: every request is one `httpx` stream on that loop, so Stop cancels the request's task,
which closes its HTTP connection at once (even while the server is silent), and the servers named above stop
generating when their client goes away. A web request never creates a thread.

    >>> engine = RemoteChatEngine(loaded, "http://127.0.0.1:8000/v1", model="microsoft/Phi-3-mini-4k-instruct")
    >>> stream = engine.chat("What is the capital of France?", [], "", GenerationSettings(temperature=0))
    >>> for text in stream: print(text)                                   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from core.config import RequestLimits
from core.engine.base import Engine
from core.engine.settings import GenerationSettings
from core.engine.stream import END_OF_TURN, ERROR, LENGTH, STOPPED, ChatStats, ChatStream
from core.errors import BusyError, GenerationError, InvalidInputError, ModelNotReadyError, TokenLabError
from core.model.loading import LoadedModel
from core.text.prompt import Prompt

log = logging.getLogger(__name__)

# Sampling fields outside the OpenAI schema: vLLM, SGLang and TGI accept them; `transformers serve` rejects unknown
# fields (HTTP 422), so after such a refusal they are left out for that server and the request is sent again.
EXTRA_FIELDS = ("top_k", "repetition_penalty")
FINISH_REASONS = {"stop": END_OF_TURN, "eos_token": END_OF_TURN, "length": LENGTH, "abort": STOPPED}


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


def _server_message(body: bytes) -> str:
    """The human part of an error body: FastAPI's `detail`, OpenAI's `error.message`, TGI's `error`, or the text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300] or "(empty body)"
    if isinstance(data, dict):
        for key in ("detail", "error", "message"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value
            if value:
                return str(value)[:300]
    return text[:300]


class RemoteChatStream(ChatStream):
    """A ChatStream fed with text deltas from a server instead of token ids from the local worker.

    `_tokens` (the base class's change counter) gets one entry per received chunk; `text` joins the chunks;
    `token_ids` are the answer tokenized locally; `stats` prefer the server's token counts (`usage`).
    """

    def __init__(self, prompt: Prompt, settings: GenerationSettings, tokenizer: Any, interval: float = 0.1):
        super().__init__(prompt, settings, tokenizer, interval)
        self._pieces: list[str] = []
        self.usage: dict[str, int] = {}
        self._cancel_task: Callable[[], None] | None = None  # set by the engine once the request's task exists
        self._responded = False  # the server has answered (a status line); a request is then never re-sent

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


class _Retry(Exception):
    """The server refused the extra sampling fields; send the request again without them."""


class RemoteChatEngine(Engine):
    """Sends each chat request to an OpenAI-compatible `/v1/chat/completions` with `stream: true`."""

    def __init__(self, loaded: LoadedModel, url: str, model: str | None = None, limits: RequestLimits | None = None,
                 timeout: float = 120.0, api_key: str | None = None) -> None:
        super().__init__(loaded, limits)
        self.base_url = api_base(url)
        self.chat_url = f"{self.base_url}/chat/completions"
        self.model_name = model
        self.timeout = timeout
        self.extras_supported: bool | None = None  # None until the server has accepted or refused top_k etc.
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._tasks: set[asyncio.Task] = set()
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=10.0), headers=self._headers,
            limits=httpx.Limits(max_connections=self.limits.max_queue + 2,
                                max_keepalive_connections=self.limits.max_queue))
        self._thread = threading.Thread(target=self._loop.run_forever, name="token-lab-remote", daemon=True)
        self._thread.start()

    # -- requests ----------------------------------------------------------------------------------------------
    def submit(self, prompt: Prompt, settings: GenerationSettings) -> RemoteChatStream:
        """Start a request; BusyError when `max_queue` requests are already in flight."""
        if self._loop.is_closed():
            raise ModelNotReadyError("The chat engine is closed.")
        stream = self._reserve(prompt, settings, RemoteChatStream)
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
            await self._client.aclose()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # -- facts about the server --------------------------------------------------------------------------------
    async def _resolve_model(self) -> str:
        """`model` as given, else the server's first model (vLLM, SGLang and TGI list what they serve)."""
        if self.model_name:
            return self.model_name
        response = await self._client.get(f"{self.base_url}/models")
        if response.status_code >= 400:
            raise self._http_error(response.status_code, response.content, "?")
        models = [m.get("id") for m in response.json().get("data", []) if m.get("id")]
        if not models:
            raise ModelNotReadyError(f"The inference server at {self.base_url} lists no models; "
                                     f"pass --engine-model (env ENGINE_MODEL).")
        self.model_name = models[0]
        return self.model_name

    def describe(self, timeout: float = 5.0) -> str:
        """One line for the status: the server, its model, and whether it answers right now."""
        async def probe() -> str:
            try:
                model = await self._resolve_model()
                headers = {**self._headers, "Connection": "close"}  # a probe that failed may leave a broken socket
                async with httpx.AsyncClient(headers=headers, timeout=timeout) as client:
                    try:
                        response = await client.get(f"{self.base_url}/models")
                    except httpx.HTTPError:
                        response = None
                    if response is None or response.status_code >= 400:  # some list models badly; all have /health
                        response = await client.get(f"{self.base_url.removesuffix('/v1')}/health")
                state = "reachable" if response.status_code < 400 else f"answers HTTP {response.status_code}"
                return f"chat runs on {self.base_url} (model {model}, {state})"
            except (httpx.HTTPError, TokenLabError, ValueError) as exc:
                reason = str(self._transport_error(exc)) if isinstance(exc, httpx.HTTPError) else str(exc)
                return f"chat runs on {self.base_url} (model {self.model_name or 'to be asked'}); now: {reason}"

        return asyncio.run_coroutine_threadsafe(probe(), self._loop).result(timeout=timeout + 5)

    # -- one request, on the loop thread ------------------------------------------------------------------------
    def _body(self, stream: RemoteChatStream, model: str, extras: bool) -> dict[str, Any]:
        s = stream.settings
        body: dict[str, Any] = {"model": model, "messages": stream.prompt.messages, "stream": True,
                                "max_tokens": s.max_new_tokens, "temperature": s.temperature, "top_p": s.top_p,
                                "stream_options": {"include_usage": True}}
        if s.seed is not None:
            body["seed"] = s.seed
        if extras:  # only where they change something, so default settings never need them
            if s.top_k > 0:
                body["top_k"] = s.top_k
            if s.repetition_penalty != 1.0:
                body["repetition_penalty"] = s.repetition_penalty
        return body

    async def _serve(self, stream: RemoteChatStream) -> None:
        stream.started = time.perf_counter()
        reason, error = END_OF_TURN, None
        try:
            if stream.cancelled:
                reason = STOPPED
                return
            model = await self._resolve_model()
            for attempt in range(3):
                try:
                    reason = await self._stream(stream, model, extras=self.extras_supported is not False)
                    break
                except _Retry:  # the server refused top_k etc.: again, without them
                    continue
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                    # a kept-alive connection the server had just closed: nothing was received, so send again
                    if attempt == 2 or stream._responded:
                        raise
        except asyncio.CancelledError:  # Stop: leaving `async with client.stream(...)` closed the connection
            reason = STOPPED
        except TokenLabError as exc:
            reason, error = ERROR, exc
        except httpx.HTTPError as exc:
            reason, error = ERROR, self._transport_error(exc)
        except Exception as exc:  # a bug: keep the reason visible
            log.exception("remote chat request failed")
            reason, error = ERROR, GenerationError(f"The request to {self.base_url} failed: {exc}")
        finally:
            stream.finish(reason, error)

    async def _stream(self, stream: RemoteChatStream, model: str, extras: bool) -> str:
        """Send the request and feed the stream; returns the stop reason."""
        body = self._body(stream, model, extras)
        async with self._client.stream("POST", self.chat_url, json=body) as response:
            stream._responded = True
            if response.status_code >= 400:
                content = await response.aread()
                sent = [f for f in EXTRA_FIELDS if f in body]
                if sent and response.status_code in (400, 422) and any(f.encode() in content for f in sent):
                    self.extras_supported = False
                    log.warning("%s refused %s; sending requests without them", self.base_url, ", ".join(sent))
                    raise _Retry
                raise self._http_error(response.status_code, content, model)
            if any(f in body for f in EXTRA_FIELDS):
                self.extras_supported = True
            finish = None
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, `event:` lines, `: keep-alive` comments
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                finish = self._apply_chunk(stream, data) or finish
        if finish is None:
            raise GenerationError(f"The inference server at {self.base_url} ended the answer without saying why "
                                  f"(no finish_reason); it may have crashed.")
        return FINISH_REASONS.get(finish, finish)

    def _apply_chunk(self, stream: RemoteChatStream, data: str) -> str | None:
        """One SSE event: text delta, usage, finish reason, or an error the server sent mid-stream."""
        try:
            chunk = json.loads(data)
        except ValueError:
            raise GenerationError(f"The inference server at {self.base_url} sent something that is not JSON: "
                                  f"{data[:200]!r}") from None
        if chunk.get("error"):
            raise GenerationError(f"The inference server at {self.base_url} failed while answering: "
                                  f"{_server_message(json.dumps(chunk).encode())}")
        if chunk.get("usage"):
            stream.usage = {k: int(v) for k, v in chunk["usage"].items() if isinstance(v, int)}
        finish = None
        for choice in chunk.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                stream.push_text(content)
            finish = choice.get("finish_reason") or finish
        return finish

    # -- errors, in words --------------------------------------------------------------------------------------
    def _transport_error(self, exc: httpx.HTTPError) -> TokenLabError:
        url = self.base_url
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return ModelNotReadyError(f"Cannot reach the inference server at {url} ({str(exc) or type(exc).__name__}). "
                                      f"Is it running? (--engine-url / ENGINE_URL)")
        if isinstance(exc, httpx.TimeoutException):
            return GenerationError(f"The inference server at {url} sent nothing for {self.timeout:g} s, so the "
                                   f"request was given up (--engine-timeout).")
        if isinstance(exc, httpx.RemoteProtocolError):
            return GenerationError(f"The inference server at {url} closed the connection mid-answer ({exc}).")
        return GenerationError(f"The request to the inference server at {url} failed: {str(exc) or type(exc).__name__}")

    def _http_error(self, status: int, content: bytes, model: str) -> TokenLabError:
        message = _server_message(content)
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
