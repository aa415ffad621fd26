"""Linear layers on oneDNN-packed weights: the same model (logits, checkpoint), rows independent of their company."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from core.config import AppConfig
from core.model.loading import LoadedModel, load_model
from core.model.packed_linear import PackedLinear, pack_linear_layers, packing_works, row_bucket

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not packing_works(torch.float32),
                                reason="oneDNN's packed linear does not run on this CPU or torch build; models keep "
                                       "torch's default kernels")


@pytest.fixture(scope="module")
def unpacked(cache_dir) -> LoadedModel:
    return load_model("bundled", device="cpu", dtype="auto", cache_dir=cache_dir, pack_linears=False)


def test_every_linear_layer_of_the_cpu_model_is_packed(bundled, phi3_tiny):
    layers = bundled.model.config.num_hidden_layers
    assert bundled.packed_layers == 7 * layers + 1  # q, k, v, o, gate, up, down per layer, and the lm_head
    assert not any(type(m) is nn.Linear for m in bundled.model.modules())
    assert isinstance(phi3_tiny.model.lm_head, PackedLinear)
    assert phi3_tiny.packed_layers == 4 * phi3_tiny.model.config.num_hidden_layers + 1  # fused qkv and gate_up


def test_packed_logits_equal_torchs_default_kernels_to_float32_rounding(bundled, unpacked):
    ids = bundled.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        packed, default = bundled.model(ids).logits, unpacked.model(ids).logits
    assert torch.allclose(packed, default, rtol=1e-4, atol=1e-4)
    assert torch.equal(packed.argmax(-1), default.argmax(-1))


@pytest.mark.parametrize("length", [1, 3, 12])  # 1: a decoding step, where oneDNN has a separate kernel
def test_a_rows_logits_are_bitwise_the_same_alone_and_among_others(bundled, length):
    ids = torch.randint(100, 40_000, (8, length), generator=torch.Generator().manual_seed(length))
    with torch.inference_mode():
        together = bundled.model(ids).logits
        alone = torch.cat([bundled.model(ids[i:i + 1]).logits for i in range(len(ids))])
    assert torch.equal(together, alone)


def test_row_counts_fall_into_few_buckets_with_little_waste():
    counts = range(1, 131_073)  # up to 32 prompts x 4096 tokens
    buckets = [row_bucket(n) for n in counts]
    assert len(set(buckets)) < 130  # oneDNN keeps a kernel per count it sees
    assert all(n <= b <= max(2, n * 1.125) for n, b in zip(counts, buckets, strict=True))
    assert buckets[1:32] == list(range(2, 33))  # decoding steps run exact


def test_zero_rows_added_for_a_bucket_leave_the_real_rows_bits_unchanged(bundled):
    layer = bundled.model.model.layers[0].mlp.down_proj
    x = torch.randn(1, 37, layer.in_features, generator=torch.Generator().manual_seed(0))
    assert row_bucket(37) == 40
    with torch.inference_mode():
        exact = torch.ops.mkldnn._linear_pointwise(x, layer.packed, None, "none", [], "")
        assert torch.equal(layer(x), exact)


def test_a_packed_model_still_saves_a_normal_checkpoint(phi3_tiny, tmp_path):
    reference = load_model(phi3_tiny.name, device="cpu", dtype="float32", pack_linears=False).model.state_dict()
    state = phi3_tiny.model.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    phi3_tiny.model.save_pretrained(tmp_path)
    phi3_tiny.tokenizer.save_pretrained(tmp_path)
    reloaded = load_model(str(tmp_path), device="cpu", dtype="float32", pack_linears=False).model.state_dict()
    assert all(torch.equal(reloaded[k], reference[k]) for k in reference)


def test_a_packed_model_can_be_deep_copied_and_pickled(phi3_tiny, tmp_path):
    ids = torch.tensor([[1, 450, 7483, 310]])
    copied = copy.deepcopy(phi3_tiny.model)
    torch.save(phi3_tiny.model, tmp_path / "model.pt")
    unpickled = torch.load(tmp_path / "model.pt", weights_only=False)
    with torch.inference_mode():
        expected = phi3_tiny.model(ids).logits
        assert torch.equal(copied(ids).logits, expected) and torch.equal(unpickled(ids).logits, expected)
    assert isinstance(copied.lm_head, PackedLinear) and copied.lm_head.packed is not phi3_tiny.model.lm_head.packed


def test_packing_again_is_a_no_op_and_counts_only_shared_weights_as_extra(bundled):
    assert pack_linear_layers(bundled.model).layers == 0
    tied = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False), nn.Linear(10, 3))
    tied[1].weight = tied[0].weight  # as a tied lm_head shares the embedding matrix
    result = pack_linear_layers(tied)
    assert (result.layers, result.extra_bytes) == (2, 10 * 4 * 4)
    assert torch.equal(tied[1].weight, tied[0].weight)  # the dense view of the packed copy
    x = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        assert tied(x).shape == (1, 3, 3)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory map from Linux's /proc")
@pytest.mark.parametrize("pack", [True, False])
def test_a_packed_model_lets_go_of_the_memory_mapped_checkpoint(pack):
    """Without packing the weights are views of the mapped safetensors file; with it, nothing holds the file, so
    its pages do not count twice (packed copy + mapped original) in the process's memory."""
    code = ("from core.model.loading import load_model\n"
            f"loaded = load_model('bundled', 'cpu', 'auto', progress=lambda m: None, pack_linears={pack})\n"
            "print('mapped', any('.safetensors' in line for line in open('/proc/self/maps')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert f"mapped {not pack}" in out.stdout.splitlines(), out.stderr[-2000:]


def test_packing_can_be_turned_off(unpacked):
    assert unpacked.packed_layers == 0 and any(type(m) is nn.Linear for m in unpacked.model.modules())
    assert AppConfig.from_args([]).pack_linears is True
    assert AppConfig.from_args(["--no-pack-linears"]).pack_linears is False
    assert AppConfig.from_args([], env={"TOKEN_LAB_PACK_LINEARS": "0"}).pack_linears is False
