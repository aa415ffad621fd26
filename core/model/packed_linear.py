"""Faster CPU matmuls: the model's linear layers run on weights packed once for oneDNN.

Why: oneDNN's kernel on a weight packed once into its blocked layout runs well above torch's default float32
linear on the CPUs measured, and whole forward passes get faster with it (bench/bench_kernels.py, figures in
docs/performance.md). Packing also makes each row's result bitwise independent of how many rows share the matmul
(MKL's result for a row changes with the row count), which removes one of the two sources of batch-dependent
rounding; attention over padded rows remains the other.

    result = pack_linear_layers(model)
    result.layers, result.extra_bytes    # SmolLM2's lm_head shares the embedding matrix: it needs its own copy
    # (211, 113246208)
"""

from __future__ import annotations

import functools
import itertools
import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

BATCH_HINT = 128  # rows oneDNN chooses its blocking for; any row count runs on the same packed weight
SMALL_ROWS = 32  # row counts up to this run exact (see row_bucket)


@functools.cache
def packing_works(dtype: torch.dtype) -> bool:
    """Whether oneDNN's packed linear runs here for `dtype`, agrees with torch's linear, and is batch-invariant
    (checked once on a small random probe: the ops are private to torch and their support varies by CPU)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(96, 80, generator=generator).to(dtype)
        rows = torch.randn(17, 80, generator=generator).to(dtype)
        packed = pack_weight(weight)
        together = bucketed_matmul(rows, packed, None)
        alone = torch.cat([bucketed_matmul(rows[i:i + 1], packed, None) for i in range(len(rows))])
        reference = rows.float() @ weight.float().T
        close = torch.allclose(together.float(), reference, rtol=1e-2 if dtype != torch.float32 else 1e-5, atol=1e-3)
        return bool(close and torch.equal(together, alone))
    except (RuntimeError, NotImplementedError):
        log.info("oneDNN packed linear unavailable for %s", dtype, exc_info=True)
        return False


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """A dense [out, in] weight in oneDNN's blocked layout, for `packed_matmul`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, batch_size=BATCH_HINT)


def packed_matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias) on a weight packed by oneDNN, at x's own row count (see row_bucket for why one row
    should run as two)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def row_bucket(rows: int) -> int:
    """The row count a matmul of `rows` rows runs at; the extra rows are zeros, their results dropped.

    oneDNN builds and keeps a kernel per row count, and serving sees every count (prompts of any length, batches of
    any size), so memory grew with every new count (bench/bench_kernels.py measures it). Up to SMALL_ROWS (decoding
    steps) counts stay exact; above, they round up to one of 8 sizes per power of two (at most 12.5% more rows). One row
    goes through as two: oneDNN's separate one-row kernel rounds differently from its many-row kernel, which gives
    every row the same bits for any count of 2 or more.

    >>> [row_bucket(n) for n in (1, 2, 32, 33, 96, 100, 1000)]
    [2, 2, 32, 36, 96, 104, 1024]
    """
    if rows <= 1:
        return 2
    if rows <= SMALL_ROWS:
        return rows
    step = 1 << (rows.bit_length() - 4)
    return -(-rows // step) * step


def bucketed_matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`packed_matmul` at the row count `row_bucket` gives x's rows: how every matmul on a packed weight runs when its
    row counts vary (prompts of any length), so that oneDNN keeps few kernels and each row gets the same bits."""
    inputs = x.shape[-1]
    rows = x.numel() // inputs
    bucket = row_bucket(rows)
    if bucket == rows:
        return packed_matmul(x, packed, bias)
    flat = x.reshape(rows, inputs)
    out = packed_matmul(torch.cat([flat, flat.new_zeros(bucket - rows, inputs)]), packed, bias)
    return out[:rows].reshape(*x.shape[:-1], out.shape[-1])


class PackedLinear(nn.Module):
    """x @ weight.T (+ bias) with the weight in oneDNN's blocked layout, for inference (no gradients reach the packed
    weight): an nn.Linear's replacement.
    `weight` gives a dense copy, for inspection."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        with torch.no_grad():
            self.packed = pack_weight(weight.detach())
        self.bias = bias

    @property
    def weight(self) -> torch.Tensor:
        return self.packed.to_dense()

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        """state_dict() and save_pretrained() see a plain Linear's `weight`: a packed model saves a normal one."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.weight

    def __getstate__(self) -> dict:
        """copy.deepcopy and pickle carry the dense weight (an opaque oneDNN tensor has no storage to copy)."""
        state = self.__dict__.copy()
        state["packed"] = self.weight
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.packed = pack_weight(self.packed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bucketed_matmul(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               f"oneDNN packed"


@dataclass
class PackingResult:
    layers: int  # linear layers now packed
    extra_bytes: int  # memory beyond the unpacked model: copies of weights that other modules share (a tied lm_head)


def pack_linear_layers(model: nn.Module) -> PackingResult:
    """Replace every plain nn.Linear on the CPU with a PackedLinear, in place; a no-op (0 layers) where packing does
    not work for the model's dtype. Packing frees each original weight, unless another module shares it."""
    shared = {id(p) for module in model.modules() if not isinstance(module, nn.Linear)
              for p in module.parameters(recurse=False)}
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is nn.Linear and child.weight.device.type == "cpu"]
    if not targets or not packing_works(targets[0][2].weight.dtype):
        return PackingResult(0, 0)
    extra = 0
    for parent, name, child in targets:
        if id(child.weight) in shared:
            extra += child.weight.numel() * child.weight.element_size()
        setattr(parent, name, PackedLinear(child.weight, child.bias))
    _copy_out_of_the_checkpoint(model)
    return PackingResult(len(targets), extra)


def _copy_out_of_the_checkpoint(model: nn.Module) -> None:
    """Copy the remaining parameters and buffers (embeddings, norms) into memory of their own. transformers maps
    the safetensors file into memory and the weights are views of it; the mapping stays, with every page packing
    read counted in the process's memory, while any tensor from it lives."""
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            tensor.data = tensor.data.clone()
