"""Model loading: the bundled GGUF and its cache, clear one-line failures, the default-model fallback, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import core.model.loading
from core.config import BUNDLED, PHI3_MODEL_ID, AppConfig
from core.errors import ModelLoadError
from core.model.bundled import bundled_checkpoint
from core.model.loading import load_model, load_with_fallback
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_bundled_model_facts(bundled):
    assert bundled.source == "bundled" and "SmolLM2" in bundled.name
    assert (bundled.device, bundled.dtype) == ("cpu", "float32")
    assert bundled.vocab_size == 49152 and bundled.context_length == 8192
    assert bundled.tokenizer.chat_template and bundled.tokenizer.eos_token == "<|im_end|>"


def test_auto_dtype_follows_the_hardware():
    assert core.model.loading.resolve_dtype("auto", "cuda") == torch.bfloat16
    assert core.model.loading.resolve_dtype("auto", "cpu") == torch.float32  # batch-invariant greedy answers
    assert core.model.loading.resolve_dtype("float32", "cpu") == torch.float32
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        core.model.loading.resolve_dtype("int3", "cpu")


def test_bundled_weights_are_cached(bundled, cache_dir):
    folder, cached = bundled_checkpoint(cache_dir)
    assert cached and (folder / "config.json").is_file()
    assert list(folder.glob("*.safetensors")), "dequantized weights are saved as safetensors"
    again = load_model(BUNDLED, device="cpu", cache_dir=cache_dir)
    assert again.from_cache


def test_cache_dir_honours_hf_home_and_xdg(tmp_path):
    from core.config import default_cache_dir

    assert default_cache_dir({"HF_HOME": str(tmp_path)}) == tmp_path / "token-lab"
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "token-lab"
    assert default_cache_dir({"TOKEN_LAB_CACHE": str(tmp_path / "x"), "HF_HOME": "/nope"}) == tmp_path / "x"


def test_phi3_fixture_loads_from_a_local_folder(phi3_tiny):
    assert phi3_tiny.source == "local"
    assert phi3_tiny.vocab_size == 32011 and phi3_tiny.model.get_input_embeddings().weight.shape[0] == 32064
    assert phi3_tiny.context_length == 4096


@pytest.mark.parametrize("model_id,reason", [
    ("/no/such/folder/anywhere", "not a local folder and not a model on the hub"),
    ("someone/definitely-not-a-model", "no network and it is not in the local cache"),
])
def test_failures_are_one_clear_line(model_id, reason):
    with pytest.raises(ModelLoadError) as info:
        load_model(model_id, device="cpu")
    message = str(info.value)
    assert reason in message and "\n" not in message and "Traceback" not in message


def test_cuda_device_without_gpu_is_explained():
    if core.model.loading.torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="no CUDA GPU is available"):
        load_model(BUNDLED, device="cuda")


def test_default_phi3_falls_back_to_bundled_and_says_so(monkeypatch, cache_dir):
    monkeypatch.setattr(core.model.loading, "default_model_id", lambda: PHI3_MODEL_ID)  # as on a CUDA machine
    messages: list[str] = []
    loaded = load_with_fallback(None, device="cpu", cache_dir=cache_dir, progress=messages.append)
    assert loaded.source == "bundled"
    assert PHI3_MODEL_ID in loaded.note and "bundled" in loaded.note
    assert any(PHI3_MODEL_ID in m and "bundled" in m for m in messages)


@pytest.mark.slow
def test_explicit_model_that_fails_exits_2_with_one_line(tmp_path):
    port = str(free_port())
    result = subprocess.run([sys.executable, "app.py", "--model", str(tmp_path / "missing"), "--port", port],
                            cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not a local folder" in errors[0]
    assert "Traceback" not in result.stderr


def test_config_flags_and_environment():
    config = AppConfig.from_args(["--port", "9000"], env={"MODEL_ID": "bundled", "GRADIO_SERVER_NAME": "0.0.0.0"})
    assert (config.model, config.port, config.host) == ("bundled", 9000, "0.0.0.0")
    assert config.model_explicit
    assert not AppConfig.from_args([], env={}).model_explicit
    assert AppConfig.from_args(["--model", "x"], env={"MODEL_ID": "y"}).model == "x"
