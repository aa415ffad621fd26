"""The embedding-only loader reads exactly the matrix a full model load gives, from single-file and sharded
checkpoints, and never mistakes Phi-3's untied `lm_head` (same shape) for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.embeddings.index import VocabIndex
from core.errors import ModelLoadError
from core.host import ModelHost
from core.model.embeddings_only import EmbeddingsOnly, load_embeddings_only
from core.model.loading import LoadedModel, load_model


def weight(loaded: LoadedModel) -> torch.Tensor:
    return loaded.model.get_input_embeddings().weight


def test_bundled_matrix_equals_the_full_load(bundled: LoadedModel, cache_dir: Path):
    only = load_embeddings_only("bundled", device="cpu", dtype="auto", cache_dir=cache_dir)
    assert isinstance(only.model, EmbeddingsOnly)
    assert only.model.tensor_name == "model.embed_tokens.weight"
    assert torch.equal(weight(only), weight(bundled))
    assert (only.name, only.source, only.dtype, only.device) == (bundled.name, "bundled", "float32", "cpu")
    assert (only.vocab_size, only.context_length) == (bundled.vocab_size, bundled.context_length)
    assert only.tokenizer.encode("Hello world") == bundled.tokenizer.encode("Hello world")


def test_phi3_matrix_equals_the_full_load_not_the_lm_head(phi3_tiny: LoadedModel):
    only = load_embeddings_only(phi3_tiny.name, device="cpu", dtype="float32")
    assert weight(only).shape == (32064, phi3_tiny.model.config.hidden_size)
    assert torch.equal(weight(only), weight(phi3_tiny))
    assert not torch.equal(weight(only), phi3_tiny.model.lm_head.weight)  # Phi-3's lm_head is untied, same shape
    assert only.vocab_size == 32011 and only.context_length == phi3_tiny.context_length


def test_bfloat16_matches_a_bfloat16_full_load(phi3_tiny: LoadedModel):
    full = load_model(phi3_tiny.name, device="cpu", dtype="bfloat16")
    only = load_embeddings_only(phi3_tiny.name, device="cpu", dtype="bfloat16")
    assert weight(only).dtype == torch.bfloat16 and only.dtype == "bfloat16"
    assert torch.equal(weight(only), weight(full))


def test_sharded_checkpoint_reads_the_one_shard(phi3_tiny: LoadedModel, tmp_path: Path):
    folder = tmp_path / "sharded"
    phi3_tiny.model.save_pretrained(folder, max_shard_size="2MB")
    phi3_tiny.tokenizer.save_pretrained(folder)
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) > 2
    only = load_embeddings_only(str(folder), device="cpu", dtype="float32")
    assert only.model.source_file == weight_map["model.embed_tokens.weight"]
    assert torch.equal(weight(only), weight(phi3_tiny))


def test_base_model_checkpoint_without_the_prefix(phi3_tiny: LoadedModel, tmp_path: Path):
    """A checkpoint saved from the base model names the tensor `embed_tokens.weight`, without `model.`."""
    folder = tmp_path / "base"
    phi3_tiny.model.model.save_pretrained(folder)
    phi3_tiny.tokenizer.save_pretrained(folder)
    only = load_embeddings_only(str(folder), device="cpu", dtype="float32")
    assert only.model.tensor_name == "embed_tokens.weight"
    assert torch.equal(weight(only), weight(phi3_tiny))


def test_without_safetensors_the_reason_is_clear(phi3_tiny: LoadedModel, tmp_path: Path):
    folder = tmp_path / "bin"
    phi3_tiny.model.config.save_pretrained(folder)
    phi3_tiny.tokenizer.save_pretrained(folder)
    with pytest.raises(ModelLoadError, match="needs safetensors weights"):
        load_embeddings_only(str(folder), device="cpu")


def test_unknown_model_is_a_one_line_error(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="not-a-model"):
        load_embeddings_only(str(tmp_path / "not-a-model"), device="cpu")


def test_embeddings_only_feeds_the_vocabulary_index_and_refuses_to_generate(phi3_tiny: LoadedModel):
    only = load_embeddings_only(phi3_tiny.name, device="cpu", dtype="float32")
    index = VocabIndex.from_model(only.model, only.tokenizer, use_gpu=False)
    reference = VocabIndex.from_model(phi3_tiny.model, phi3_tiny.tokenizer, use_gpu=False)
    assert index.size == reference.size == 32011
    assert [n.id for n in index.neighbors("#500", k=5).neighbors] == \
        [n.id for n in reference.neighbors("#500", k=5).neighbors]
    with pytest.raises(RuntimeError, match="chat runs on the server"):
        only.model(torch.tensor([[1]]))


def test_remote_lab_exits_on_an_explicit_model_that_fails(tmp_path: Path):
    from core.config import AppConfig

    config = AppConfig(model=str(tmp_path / "missing"), engine_url="http://127.0.0.1:9/v1", device="cpu")
    host = ModelHost(config).start()
    assert host.wait(60)
    assert host.error is not None and "missing" in str(host.error)


def test_remote_mode_without_model_falls_back_with_a_note(cache_dir: Path):
    from core.model.embeddings_only import load_embeddings_with_fallback

    loaded = load_embeddings_with_fallback(None, "my-served-name", device="cpu", cache_dir=cache_dir)
    assert loaded.source == "bundled"
    assert "my-served-name" in loaded.note and "pass --model" in loaded.note
