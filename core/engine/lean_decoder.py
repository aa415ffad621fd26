"""BatchDecoder with a static KV cache and the lean decoding step (core/engine/lean_step.py), for the models that
step supports (Llama-family, float32, CPU): the same answers, bit for bit, in less time per token.

The running batch's keys and values live in preallocated buffers with free columns after the ones in use, so a
step writes one column per layer instead of concatenating every layer's cache, and the step itself runs without
transformers' modules; a prompt's columns go through the lean step's `forward` too. The prefix cache, admission and
pruning stay BatchDecoder's: before any of them the base class's cache is pointed at the columns in use (`_sync`),
and after them the batch is copied once into fresh buffers (`_seat`).

    decoder = LeanBatchDecoder(model, stop_ids=[2], prefix_cache=PrefixCache(256 << 20))
"""

from __future__ import annotations

import torch

from core.engine.batch_decoder import BatchDecoder, Prefill
from core.engine.lean_step import shared_step

HEADROOM = 256  # free columns (at least) given to the batch each time it is seated


class LeanBatchDecoder(BatchDecoder):
    """A BatchDecoder whose decoding steps run the model's LeanLlamaStep on a static cache. Only for
    `lean_step.supports`."""

    def __init__(self, model, stop_ids: list[int], prefix_cache=None) -> None:
        super().__init__(model, stop_ids, prefix_cache)
        self.lean = shared_step(model)
        self._seated = False
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._mask_long = self._mask_bool = self._positions = None
        self._length = 0  # columns in use
        self._padded = False  # some row has a masked column

    def _sync(self) -> None:
        """Point the base class's cache and mask at the columns in use, before its own methods read them."""
        if not self._seated:
            return
        n = self._length
        for layer, k, v in zip(self.cache.layers, self._keys, self._values, strict=True):
            layer.keys, layer.values = k[:, :, :n], v[:, :, :n]
        self.mask = self._mask_long[:, :n]

    def _seat(self) -> None:
        """Copy the batch's cache into buffers with at least HEADROOM free columns. Capacities are multiples of
        HEADROOM, so buffers freed by one seating fit the next and the heap does not fragment."""
        rows, kv, n, d = self.cache.layers[0].keys.shape
        capacity = -(-(n + HEADROOM) // HEADROOM) * HEADROOM
        self._keys, self._values = [], []
        for layer in self.cache.layers:
            k = layer.keys.new_empty(rows, kv, capacity, d)
            v = layer.values.new_empty(rows, kv, capacity, d)
            k[:, :, :n], v[:, :, :n] = layer.keys, layer.values
            self._keys.append(k)
            self._values.append(v)
        self._mask_long = torch.ones(rows, capacity, dtype=self.mask.dtype)
        self._mask_long[:, :n] = self.mask
        self._mask_bool = self._mask_long.bool()  # the columns after n will all hold real tokens
        self._padded = not bool(self.mask.all())
        self._positions = self.mask.sum(dim=1)
        self.lean.reserve(int(self._positions.max()) + capacity - n + 1)
        self._length = n
        self._seated = True

    # -- the base class's membership changes, on its own view of the cache -----------------------------------------
    def prefill(self, group: Prefill, columns: int | None = None) -> bool:
        self._sync()  # the last chunk merges the group into the running batch
        done = super().prefill(group, columns)
        if done:
            self._seated = False
        return done

    def _feed(self, group: Prefill, start: int, end: int) -> torch.Tensor:
        stream = self.lean.forward(group.ids[:, start:end], group.positions[:, start:end],
                                   group.mask[:, :group.past + end], group.cache)
        return self.lean.logits(stream[-1][:, -1])

    def prune(self) -> None:
        if all(slot.finish_reason is None for slot in self.slots):
            return
        self._sync()
        super().prune()
        self._seated = False

    def reset(self) -> None:
        super().reset()
        self._seated = False

    # -- decoding ---------------------------------------------------------------------------------------------------
    def step(self) -> None:
        self.prune()
        if not self.slots:
            return
        if not self._seated or self._length == self._keys[0].shape[2]:
            self._sync()
            self._seat()
        tokens = torch.tensor([slot.pending for slot in self.slots])
        logits = self.lean(tokens, self._positions, self._keys, self._values, self._length,
                           self._mask_bool if self._padded else None)
        self._length += 1
        self._positions += 1
        for slot, token in zip(self.slots, self._choose(logits, self.slots), strict=True):
            self._accept(slot, token)
