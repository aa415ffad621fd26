"""The model host: one object that owns the loaded model, the chat engine and the vocabulary index.

It loads in a background thread so the UI can come up at once and show progress; every request asks
`host.require()`, which waits briefly for the load and otherwise says, in words, why it cannot serve yet.

Which chat engine: `RemoteChatEngine` when `engine_url` is set (then only the tokenizer and the embedding matrix are
loaded locally), `ZeroGPUChatEngine` on Hugging Face ZeroGPU hardware, else the in-process `ChatEngine`.

Importing this module is cheap on purpose: torch, transformers and FAISS are imported by the loader thread, so
app.py can start loading first and import gradio and build the UI meanwhile (start-up time, see bench/).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import ENGINES, AppConfig
from core.engine.zerogpu import on_zerogpu
from core.errors import ModelLoadError, ModelNotReadyError
from core.work.fair_share import FairShare
from core.work.workload import Workload

if TYPE_CHECKING:
    from core.embeddings.index import VocabIndex
    from core.embeddings.vocabulary_map import VocabularyMap
    from core.engine.base import Engine
    from core.model.loading import LoadedModel

log = logging.getLogger(__name__)

# Modules whose imports reach every core module that imports torch, transformers or FAISS (tests/test_import_rules.py
# checks it): the loader thread imports them all before the UI is built, since transformers' lazy module is not safe
# to import from two threads at once.
HEAVY_MODULES = ("core.model.loading", "core.model.embeddings_only", "core.text.prompt", "core.text.tokens",
                 "core.text.registry", "core.text.facts", "core.embeddings.index", "core.embeddings.evaluator",
                 "core.engine.local", "core.engine.onnx_model", "core.engine.remote", "core.engine.zerogpu_engine",
                 "core.inside.contextual", "core.inside.logit_lens", "core.inside.attention", "core.inside.attribution")
LOADER_EXIT_WAIT_S = 120.0  # the longest an exit waits for loading to end, a first start (dequantizing) included


@dataclass
class ModelParts:
    """What a request works with once the model is loaded."""

    loaded: LoadedModel
    engine: Engine
    index: VocabIndex


class ModelHost:
    """Loads the model in the background and holds what is built on it (`ModelParts`)."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.work = Workload(share=FairShare(config.heavy_share))  # heavy work's rules, the same at every door
        self.status = "starting"
        self.error: ModelLoadError | None = None
        self._parts: ModelParts | None = None
        self._ready = threading.Event()
        self._imported = threading.Event()
        self._map: VocabularyMap | None = None
        self._map_lock = threading.Lock()

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, config: AppConfig | None = None) -> ModelHost:
        """A ModelHost around an already loaded model: docs/screenshots.py draws the docs' pictures on one, and the
        tests and benchmarks serve one loaded model through several hosts."""
        host = cls(config or AppConfig(model=loaded.name))
        host._finish(loaded)
        return host

    def start(self) -> ModelHost:
        """Begin loading in a background thread; returns at once."""
        self._loader = threading.Thread(target=self._load, name="token-lab-loader", daemon=True)
        self._loader.start()
        atexit.register(self._stop_before_exit)
        return self

    def _stop_before_exit(self) -> None:
        """At interpreter exit, let the loader end (up to LOADER_EXIT_WAIT_S) and stop the engine's worker: a
        daemon thread still inside a torch op when Python finalizes aborts the process with status 134."""
        self._loader.join(LOADER_EXIT_WAIT_S)
        self.close()

    def close(self) -> None:
        """Stop the chat engine (its worker thread, its connections); the host serves no more chats after this."""
        if self._parts is not None:
            self._parts.engine.close()
        if self._map is not None:
            self._map.close()

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
                for module in HEAVY_MODULES:  # torch, transformers and FAISS come with them, off the main thread
                    importlib.import_module(module)
            finally:
                self._imported.set()
            from core.model.embeddings_only import load_embeddings_with_fallback
            from core.model.loading import load_with_fallback

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
        from core.engine.local import ChatEngine
        from core.engine.remote import RemoteChatEngine
        from core.engine.zerogpu_engine import ZeroGPUChatEngine

        c = self.config
        if c.engine_url:
            return RemoteChatEngine(loaded, c.engine_url, model=c.engine_model, limits=c.limits,
                                    timeout=c.engine_timeout, api_key=c.engine_api_key)
        if on_zerogpu():
            return ZeroGPUChatEngine(loaded, c.limits)
        onnx, onnx_note = self._onnx_model(loaded)
        return ChatEngine(loaded, c.limits, max_batch=c.max_batch, prefix_cache_mb=c.prefix_cache_mb,
                          prefill_chunk=c.prefill_chunk, onnx=onnx, onnx_note=onnx_note, share=self.work.share)

    def _onnx_model(self, loaded: LoadedModel):
        """The converted model when chat runs on ONNX Runtime (`--engine onnx`, or `auto` on a CPU where it can),
        with the ready line's phrase for it; (None, "") for the torch engine. Under `auto` a model that cannot run
        there chats on torch and the header says why; under `onnx` it is a load error."""
        import torch

        from core.engine.onnx_model import load_onnx_model, open_prebuilt
        from core.model.onnx_export import convertible

        c = self.config
        if c.engine not in ENGINES:
            raise ModelLoadError(f"unknown engine {c.engine!r}: use {', '.join(ENGINES)}")
        if c.onnx_model and (c.engine == "torch" or loaded.device != "cpu"):
            raise ModelLoadError(f"--onnx-model runs on the CPU with --engine onnx or auto (here: --engine {c.engine} "
                                 f"on {loaded.device})")
        if c.onnx_model:
            return open_prebuilt(Path(c.onnx_model), loaded.model.config.vocab_size, torch.get_num_threads())
        if c.engine == "torch" or (c.engine == "auto" and loaded.device != "cpu"):
            return None, ""
        why = None
        if loaded.device != "cpu":
            why = f"it runs on the CPU, and the model is on {loaded.device}"
        elif not convertible(loaded.model.config):
            architecture = (getattr(loaded.model.config, "architectures", None) or ["this architecture"])[0]
            why = f"{architecture} is not among the architectures it runs (Llama, Phi-3)"
        elif loaded.weights_dir is None:
            why = "the model's checkpoint folder is not in the local cache"
        if why is None:
            try:
                return load_onnx_model(loaded.weights_dir, c.cache_dir, torch.get_num_threads(), self._progress)
            except ModelLoadError as exc:
                why = str(exc)
        if c.engine == "onnx":
            raise ModelLoadError(f"--engine onnx: {why}")
        loaded.note = f"{loaded.note} Chat runs on torch, not ONNX Runtime: {why}.".strip()
        return None, ""

    def _finish(self, loaded: LoadedModel) -> None:
        from core.embeddings.index import VocabIndex

        # On ZeroGPU the weights sit on a GPU lent only inside `gpu` calls: index on the CPU.
        index = VocabIndex.from_model(loaded.model, loaded.tokenizer, use_gpu=False if on_zerogpu() else None,
                                      cache_dir=self.config.cache_dir)
        engine = self._make_engine(loaded)
        self._parts = ModelParts(loaded=loaded, engine=engine, index=index)
        note = f" {loaded.note}" if loaded.note else ""
        what = " tokenizer and embeddings" if self.config.engine_url else ""  # what load_embeddings_with_fallback loads
        self.status = (f"ready: {loaded.name}{what} loaded in {loaded.load_seconds:.1f} s"
                       f"{' (cached weights)' if loaded.from_cache else ''}; {engine.describe()}; "
                       f"index: {index.describe()}.{note}")
        self._progress(self.status)
        # The model, tokenizer and index are hundreds of thousands of objects that live as long as the process: out
        # of the collector's sight, a full collection no longer walks them all while a chat streams.
        gc.freeze()
        self._ready.set()

    def vocabulary_map(self) -> VocabularyMap:
        """The loaded model's map of its whole vocabulary, made at its first use (categorising every token takes a
        moment, and its UMAP projection starts only when someone asks for it)."""
        parts = self.require()
        with self._map_lock:
            if self._map is None:
                from core.embeddings.vocabulary_map import VocabularyMap

                self._map = VocabularyMap(parts.index, self.config.cache_dir)
            return self._map

    def wait(self, timeout: float | None = None) -> bool:
        """Block until loading ends (ready or failed); True when it ended."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._parts is not None

    def require(self, timeout: float = 0.0) -> ModelParts:
        """The loaded parts, or ModelNotReadyError saying why not."""
        if self._parts is None:
            self._ready.wait(timeout)
        if self._parts is not None:
            return self._parts
        if self.error is not None:
            raise ModelNotReadyError(f"The model could not be loaded: {self.error}")
        raise ModelNotReadyError(f"The model is still loading ({self.status}). Try again in a moment.")
