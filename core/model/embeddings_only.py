"""The tokenizer and the input embedding matrix of a model, without loading its other weights.

When chat runs on an inference server (`--engine-url`), the Tokens and Embeddings tabs still need the model's
tokenizer and its input embeddings. Loading every weight for that would cost all of Phi-3's weights; instead the one
embedding tensor is read from the safetensors files (only its shard is downloaded, or read from the hub cache):

    loaded = load_embeddings_only("microsoft/Phi-3-mini-4k-instruct")
    loaded.model.get_input_embeddings().weight.shape
    # torch.Size([32064, 3072])

The tensor's name comes from the model class itself (built on the meta device, so no memory), and the result equals
the embedding of a full `from_pretrained` load in the same dtype, bit for bit (tests check it).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from core.config import BUNDLED, PHI3_MODEL_ID, default_cache_dir
from core.errors import ModelLoadError
from core.model.bundled import BUNDLED_NAME, bundled_checkpoint
from core.model.loading import (
    LoadedModel,
    Progress,
    explain_load_error,
    hub_reachable,
    resolve_device,
    resolve_dtype,
)

log = logging.getLogger(__name__)
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Tails of input-embedding names across architectures, for checkpoints whose names differ from the class's.
_KNOWN_TAILS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight",
                "tok_embeddings.weight")


class EmbeddingsOnly(torch.nn.Module):
    """Stands in for a causal LM where only `get_input_embeddings()` (and `config`) are needed: the vocabulary index
    and the header. It cannot generate; `forward` says so instead of failing obscurely."""

    def __init__(self, weight: torch.Tensor, config: PretrainedConfig, tensor_name: str, source_file: str) -> None:
        super().__init__()
        self.embed_tokens = torch.nn.Embedding.from_pretrained(weight, freeze=True)
        self.config = config
        self.tensor_name = tensor_name
        self.source_file = source_file

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.embed_tokens

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("this is the embedding matrix alone (remote-engine mode); chat runs on the server")


def embedding_spec(config: PretrainedConfig) -> tuple[list[str], tuple[int, ...]]:
    """The names the input embedding may have in a checkpoint, best first, and its shape: the model class's own
    name (from a skeleton on the meta device, so no memory), without or with the base-model prefix."""
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    module = skeleton.get_input_embeddings()
    own = next(name for name, m in skeleton.named_modules() if m is module) + ".weight"
    prefix = getattr(skeleton, "base_model_prefix", "") or ""
    names = [own]
    if prefix and own.startswith(prefix + "."):
        names.append(own[len(prefix) + 1:])
    elif prefix:
        names.append(f"{prefix}.{own}")
    return names, tuple(module.weight.shape)


def pick_embedding_name(config: PretrainedConfig, names: list[str], shape_of: Callable[[str], tuple[int, ...]]) -> str:
    """The checkpoint's input-embedding tensor among `names`: a name the class uses, else a well-known one, with the
    expected shape (so an untied `lm_head` of the same shape is never taken)."""
    preferred, shape = embedding_spec(config)
    present = set(names)
    candidates = [n for n in preferred if n in present]
    candidates += [n for n in names if n.endswith(_KNOWN_TAILS) and "lm_head" not in n and n not in candidates]
    for name in candidates:
        if tuple(shape_of(name)) == shape:
            return name
    raise ModelLoadError(f"no input-embedding tensor of shape {list(shape)} in the checkpoint "
                         f"(looked for {', '.join(preferred + list(_KNOWN_TAILS))})")


def _header_shape(file: Path, name: str) -> tuple[int, ...]:
    with safe_open(str(file), framework="pt") as f:
        return tuple(f.get_slice(name).get_shape())


def _read_tensor(file: Path, name: str) -> torch.Tensor:
    with safe_open(str(file), framework="pt") as f:
        return f.get_tensor(name)


Fetch = Callable[[str], "Path | None"]


def _from_files(fetch: Fetch, config: PretrainedConfig) -> tuple[torch.Tensor, str, str]:
    """(tensor, its name, its file) from a sharded checkpoint (index + the one shard) or a single file."""
    index = fetch(INDEX_FILE)
    if index is not None:
        weight_map: dict[str, str] = json.loads(Path(index).read_text())["weight_map"]

        def shard(name: str) -> Path:
            path = fetch(weight_map[name])
            if path is None:
                raise ModelLoadError(f"{weight_map[name]} is listed in {INDEX_FILE} but missing")
            return path

        name = pick_embedding_name(config, list(weight_map), lambda n: _header_shape(shard(n), n))
        return _read_tensor(shard(name), name), name, weight_map[name]
    single = fetch(SINGLE_FILE)
    if single is None:
        raise ModelLoadError(f"no {SINGLE_FILE} or {INDEX_FILE}: the embedding-only load needs safetensors weights")
    with safe_open(str(single), framework="pt") as f:
        names = list(f.keys())
    name = pick_embedding_name(config, names, lambda n: _header_shape(single, n))
    return _read_tensor(single, name), name, SINGLE_FILE


def _local_fetch(folder: Path) -> Fetch:
    def fetch(filename: str) -> Path | None:
        path = folder / filename
        return path if path.is_file() else None
    return fetch


def _hub_fetch(repo_id: str, offline: bool) -> Fetch:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    def fetch(filename: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo_id, filename, local_files_only=offline))
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return None
    return fetch


def load_embeddings_only(model_id: str, device: str = "auto", dtype: str = "auto", cache_dir: Path | None = None,
                         progress: Progress = log.info) -> LoadedModel:
    """Tokenizer, config and input embeddings of `model_id` (hub id, local folder or `bundled`) as a LoadedModel
    whose `model` is an EmbeddingsOnly; ModelLoadError with a one-line reason otherwise."""
    start = time.perf_counter()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    from_cache, offline = False, False
    try:
        if model_id == BUNDLED:
            folder, from_cache = bundled_checkpoint(Path(cache_dir or default_cache_dir()), progress)
            where, fetch, name, source = str(folder), _local_fetch(folder), BUNDLED_NAME, "bundled"
        elif Path(model_id).expanduser().is_dir():
            folder = Path(model_id).expanduser()
            where, fetch, name, source = str(folder), _local_fetch(folder), model_id, "local"
        else:
            offline = not hub_reachable()
            if offline:
                os.environ["HF_HUB_OFFLINE"] = "1"
            where, fetch, name, source = model_id, _hub_fetch(model_id, offline), model_id, "hub"
        progress(f"loading the tokenizer and the input embeddings of {name} (not the other weights)")
        # local_files_only: huggingface_hub reads HF_HUB_OFFLINE once, at import, so setting it now is not enough
        config = AutoConfig.from_pretrained(where, trust_remote_code=False, local_files_only=offline)
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=False, local_files_only=offline)
        tensor, tensor_name, file = _from_files(fetch, config)
    except ModelLoadError as exc:
        raise ModelLoadError(f"could not load the embeddings of {model_id!r}: {exc}") from exc
    except Exception as exc:  # transformers and huggingface_hub raise OSError, ValueError, HTTP errors...
        raise ModelLoadError(explain_load_error(exc, model_id)) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = EmbeddingsOnly(tensor.to(device=dev, dtype=torch_dtype), config, tensor_name, file).eval()
    dtype_name = str(torch_dtype).removeprefix("torch.")
    elapsed = time.perf_counter() - start
    rows, dims = model.embed_tokens.weight.shape
    progress(f"loaded {name}'s embeddings ({rows:,} x {dims} {dtype_name}, {tensor_name} from {file}) "
             f"on {dev} in {elapsed:.1f} s")
    return LoadedModel(name=name, source=source, model=model, tokenizer=tokenizer,  # type: ignore[arg-type]
                       device=dev, dtype=dtype_name, load_seconds=elapsed, from_cache=from_cache)


def load_embeddings_with_fallback(model_id: str | None, engine_model: str | None = None, device: str = "auto",
                                  dtype: str = "auto", cache_dir: Path | None = None,
                                  progress: Progress = log.info) -> LoadedModel:
    """For remote-engine mode: `model_id` when given (its failure is final); else the served model's own files when
    `engine_model` names a hub id or folder, else Phi-3; if none loads, the bundled model, with a note saying that
    its tokens and embeddings are not the served model's."""
    if model_id is not None:
        return load_embeddings_only(model_id, device, dtype, cache_dir, progress)
    failures = []
    for candidate in dict.fromkeys(m for m in (engine_model, PHI3_MODEL_ID) if m):
        try:
            return load_embeddings_only(candidate, device, dtype, cache_dir, progress)
        except ModelLoadError as exc:
            failures.append(str(exc))
            progress(str(exc))
    loaded = load_embeddings_only(BUNDLED, device, dtype, cache_dir, progress)
    loaded.note = (f"{'; '.join(failures)}. The Tokens and Embeddings tabs show the bundled SmolLM2-135M instead, "
                   f"not the served model: pass --model to choose.")
    return loaded
