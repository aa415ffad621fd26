"""The Lab: one object that owns the loaded model, the chat engine and the vocabulary index.

It loads in a background thread so the UI can come up at once and show progress; every request asks
`lab.require()`, which waits briefly for the load and otherwise says, in words, why it cannot serve yet.

Which chat engine: `RemoteChatEngine` when `engine_url` is set (then only the tokenizer and the embedding matrix are
loaded locally), `ZeroGPUChatEngine` on Hugging Face ZeroGPU hardware, else the in-process `ChatEngine`.

Importing this module is cheap on purpose: torch, transformers and FAISS are imported by the loader thread, so
app.py can start loading first and import gradio and build the UI meanwhile (start-up time, see bench/).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from core.config import AppConfig
from core.errors import ModelLoadError, ModelNotReadyError
from core.zerogpu import on_zerogpu

if TYPE_CHECKING:
    from core.chat import ChatEngine
    from core.models import LoadedModel
    from core.remote_engine import RemoteChatEngine
    from core.vocab_index import VocabIndex
    from core.zerogpu_engine import ZeroGPUChatEngine

# the same interface: prompt, submit, chat, pending, close
Engine = Union["ChatEngine", "RemoteChatEngine", "ZeroGPUChatEngine"]

log = logging.getLogger(__name__)

LOADER_EXIT_WAIT_S = 30.0  # the longest an exit waits for loading to end (a hub download may take longer)


@dataclass
class LabParts:
    """What a request works with once the model is loaded."""

    loaded: LoadedModel
    engine: Engine
    index: VocabIndex


class Lab:
    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.status = "starting"
        self.error: ModelLoadError | None = None
        self._parts: LabParts | None = None
        self._ready = threading.Event()
        self._imported = threading.Event()
        self._started = time.perf_counter()
        self.ready_seconds: float | None = None

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, config: AppConfig | None = None) -> Lab:
        """A Lab around an already loaded model (tests, benchmarks, embedding in other apps)."""
        lab = cls(config or AppConfig(model=loaded.name))
        lab._finish(loaded)
        return lab

    def start(self) -> Lab:
        """Begin loading in a background thread; returns at once."""
        self._loader = threading.Thread(target=self._load, name="token-lab-loader", daemon=True)
        self._loader.start()
        atexit.register(self._stop_before_exit)
        return self

    def _stop_before_exit(self) -> None:
        """At interpreter exit, let the loader end (up to LOADER_EXIT_WAIT_S) and stop the engine's worker: a
        daemon thread still inside a torch op when Python finalizes aborts the process with status 134."""
        self._loader.join(LOADER_EXIT_WAIT_S)
        if self._parts is not None:
            self._parts.engine.close()

    def _progress(self, message: str) -> None:
        self.status = message
        log.info(message)
        print(f"[token-lab] {message}", flush=True)

    def wait_for_imports(self, timeout: float | None = 120) -> None:
        """Wait until the loader thread has imported torch, transformers and FAISS. transformers' lazy module is not
        safe to import from two threads at once, so the UI (which imports core modules) is built after this."""
        self._imported.wait(timeout)

    def _load(self) -> None:
        try:
            try:
                import core.chat
                import core.remote_engine
                import core.tokens
                import core.vocab_index
                import core.zerogpu_engine  # noqa: F401  (imported here, off the main thread)
            finally:
                self._imported.set()
            from core.embedding_loader import load_embeddings_with_fallback
            from core.models import load_with_fallback

            c = self.config
            if c.engine_url:
                loaded = load_embeddings_with_fallback(c.model, c.engine_model, c.device, c.dtype, c.cache_dir,
                                                       self._progress)
            else:
                loaded = load_with_fallback(c.model, c.device, c.dtype, c.cache_dir, self._progress, c.pack_linears)
            self._progress("building the vocabulary index")
            self._finish(loaded)
        except ModelLoadError as exc:
            self.error = exc
            self.status = f"failed: {exc}"
            self._ready.set()
        except Exception as exc:  # a bug, not a user error: keep the reason visible
            log.exception("loading failed")
            self.error = ModelLoadError(f"loading failed unexpectedly: {exc}")
            self.status = f"failed: {exc}"
            self._ready.set()

    def _make_engine(self, loaded: LoadedModel) -> Engine:
        from core.chat import ChatEngine
        from core.remote_engine import RemoteChatEngine
        from core.zerogpu_engine import ZeroGPUChatEngine

        c = self.config
        if c.engine_url:
            return RemoteChatEngine(loaded, c.engine_url, model=c.engine_model, limits=c.limits,
                                    timeout=c.engine_timeout, api_key=os.environ.get("ENGINE_API_KEY") or None)
        if on_zerogpu():
            return ZeroGPUChatEngine(loaded, c.limits)
        return ChatEngine(loaded, c.limits, max_batch=c.max_batch, prefix_cache_mb=c.prefix_cache_mb)

    def _finish(self, loaded: LoadedModel) -> None:
        from core.remote_engine import RemoteChatEngine
        from core.vocab_index import VocabIndex

        # On ZeroGPU the weights sit on a GPU lent only inside `gpu` calls: index on the CPU.
        index = VocabIndex.from_model(loaded.model, loaded.tokenizer, use_gpu=False if on_zerogpu() else None,
                                      cache_dir=self.config.cache_dir)
        engine = self._make_engine(loaded)
        self._parts = LabParts(loaded=loaded, engine=engine, index=index)
        self.ready_seconds = time.perf_counter() - self._started
        note = f" {loaded.note}" if loaded.note else ""
        remote = isinstance(engine, RemoteChatEngine)
        what = " tokenizer and embeddings" if remote else ""
        where = f" {engine.describe()};" if remote else ""
        self.status = (f"ready: {loaded.name}{what} loaded in {loaded.load_seconds:.1f} s"
                       f"{' (cached weights)' if loaded.from_cache else ''};{where} index: {index.describe()}.{note}")
        self._progress(self.status)
        self._ready.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until loading ends (ready or failed); True when it ended."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._parts is not None

    def require(self, timeout: float = 0.0) -> LabParts:
        """The loaded parts, or ModelNotReadyError saying why not."""
        if self._parts is None:
            self._ready.wait(timeout)
        if self._parts is not None:
            return self._parts
        if self.error is not None:
            raise ModelNotReadyError(f"The model could not be loaded: {self.error}")
        raise ModelNotReadyError(f"The model is still loading ({self.status}). Try again in a moment.")
