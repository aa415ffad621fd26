"""The chat model for ONNX Runtime: the weights the app loads, converted once by onnxruntime-genai's model builder
into an ONNX decoder with int8 weights, and cached beside the dequantized weights.

Why a converted copy: float32 decoding on a CPU is bound by reading 4 bytes per weight per token; the builder's
int8 MatMulNBits kernels read one, and ONNX Runtime tunes them for every CPU it ships to. The cache key covers the
source weights (file names, sizes and modification times), the builder's version and the format, so a different
model or version never reuses a conversion.

    folder, seconds = onnx_checkpoint(Path("~/.cache/token-lab/smollm2-…"), cache_dir)
    (folder / "model.onnx").is_file(), seconds          # seconds is None when the conversion came from the cache
    # (True, None)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from core.errors import ModelLoadError

log = logging.getLogger(__name__)

PRECISION = "int8"  # fidelity and speed measured against float32 and llama.cpp in bench/bench_fidelity.py
# Only the last position's logits: a prompt's other positions never need the LM head, a large share of a small
# model's work per token. A scale per 16 weights rather than the builder's 32 keeps the next-token distribution
# closer to float32's for a little more reading per token; the formats tried and their figures are in
# docs/performance.md.
EXTRA_OPTIONS = ("prune_lm_head=true", "block_size=16")
BUILDER = "onnxruntime_genai.models.builder"
# The architectures converted and run here and tested (tests/test_onnx_engine.py): the builder converts more, but
# an untested one keeps the torch engine.
SUPPORTED_ARCHITECTURES = frozenset({"LlamaForCausalLM", "Phi3ForCausalLM"})
CONVERT_TIMEOUT_S = 3600  # a 3.8B model takes minutes on 2 cores; a stuck builder must not hold the start forever

Progress = Callable[[str], None]


def builder_missing() -> str | None:
    """None when onnxruntime-genai's model builder can run, else the reason in a sentence (ONNX Runtime itself is
    a dependency the engine imports)."""
    for module, package in (("onnxruntime_genai", "onnxruntime-genai"), ("onnx_ir", "onnx-ir")):
        if importlib.util.find_spec(module) is None:
            return f"the {package} package is not installed (make setup installs it)"
    return None


def convertible(config) -> bool:
    """Whether a model with this transformers config converts and chats on ONNX Runtime here."""
    architectures = getattr(config, "architectures", None) or []
    return bool(architectures) and architectures[0] in SUPPORTED_ARCHITECTURES


def _cache_key(source: Path) -> str:
    files = sorted(p for p in source.iterdir() if p.is_file())
    raw = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    raw += [f"onnxruntime-genai {importlib.metadata.version('onnxruntime-genai')}", PRECISION, *EXTRA_OPTIONS]
    return hashlib.sha256("\n".join(raw).encode()).hexdigest()[:16]


def _convert(source: Path, target: Path) -> None:
    """Run the builder in its own process: it loads a second float32 copy of the weights, which is freed with it."""
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    command = [sys.executable, "-m", BUILDER, "-i", str(source), "-o", str(tmp), "-p", PRECISION, "-e", "cpu",
               "-c", str(tmp / ".hf-cache"), "--extra_options", *EXTRA_OPTIONS]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")  # it reads the folder; never the hub
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(f"converting the model to ONNX took over {CONVERT_TIMEOUT_S} s") from None
    if done.returncode != 0 or not (tmp / "genai_config.json").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        log.error("the ONNX model builder failed:\n%s", "\n".join(lines[-30:]))
        raise ModelLoadError(f"converting the model to ONNX failed: {lines[-1] if lines else done.returncode}")
    shutil.rmtree(tmp / ".hf-cache", ignore_errors=True)
    if target.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(target)


def onnx_checkpoint(source: Path, cache_dir: Path, progress: Progress | None = None) -> tuple[Path, float | None]:
    """The ONNX conversion of the model folder `source` (a transformers checkpoint with its tokenizer); returns
    (folder, seconds the conversion took, or None when it came from the cache)."""
    reason = builder_missing()
    if reason:
        raise ModelLoadError(reason)
    source = Path(source)
    target = Path(cache_dir) / f"onnx-{PRECISION}-{source.name}-{_cache_key(source)}"
    if (target / "genai_config.json").is_file():
        return target, None
    target.parent.mkdir(parents=True, exist_ok=True)
    (progress or log.info)(f"converting the model for ONNX Runtime ({PRECISION} weights; first start only)")
    start = time.perf_counter()
    _convert(source, target)
    return target, time.perf_counter() - start
