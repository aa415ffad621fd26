"""Continuous batching on ONNX Runtime: the local engine's model runner for the converted int8 chat model
(core/engine/onnx_model.py), with everything the torch runner offers: chunked prompts, the prefix cache, each
request's own sampling and seed, log-probabilities.

Rows sit in one cache, right-aligned at position 0 (ONNX Runtime's attention takes each row's length from its mask),
so there is no padding to mask and a row's answer never depends on the rows beside it. A new request's prompt is
read in its own one-row cache, a chunk per turn of the worker's loop (this ONNX Runtime refuses several multi-token
rows over a cache); a prefix found in the prefix cache is copied in first and only the rest is read. When every
prompt of a group is read, the group's rows are copied into the running batch's cache (a lone row with none running
keeps its own), which is re-laid whenever its rows change or its longest row needs more columns; each decoding step
writes one column per layer in place. The prefix cache keeps prompts' keys (read in runs, never one token at a
time), so an answer never depends on what the cache held.

    decoder = OnnxBatchDecoder(OnnxModel(folder, threads=2), stop_ids=[2], prefix_cache=PrefixCache(256 << 20))
    decoder.admit([slot]); decoder.step()
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.engine.batch_decoder import Decoder, Slot
from core.engine.onnx_model import KVCache, OnnxModel
from core.engine.prefix_cache import PrefixCache

HEADROOM = 256  # free columns (at least) a cache is laid out with; capacities are multiples of it
# Prompt tokens are always read at least two at a time: ONNX Runtime computes a lone new token (a decoding step)
# along another path than several, and with int8 activations the two differ visibly. Reading prompts in runs of two
# or more keeps a prompt's keys, and so its answer, the same however it is chunked or found in the prefix cache.
MIN_RUN = 2


def _capacity(columns: int) -> int:
    return -(-(columns + HEADROOM) // HEADROOM) * HEADROOM


@dataclass
class OnnxPrefill:
    """Requests whose prompts are being read, each in its own one-row cache."""

    slots: list[Slot]
    caches: list[KVCache]
    lengths: list[int]  # prompt tokens of each row in its cache so far (a reused prefix included)
    logits: list[np.ndarray | None]  # each row's last logits, once its prompt is read


class OnnxBatchDecoder(Decoder):
    """The running batch on the converted model. Not thread-safe: exactly one thread (the engine's worker) calls
    it."""

    def __init__(self, model: OnnxModel, stop_ids: list[int], prefix_cache: PrefixCache | None = None) -> None:
        super().__init__(stop_ids, prefix_cache)
        self.model = model
        self.cache: KVCache | None = None
        self.lengths = np.zeros(0, np.int64)  # tokens of each row in `cache` (all but its pending token)

    # -- reading prompts ---------------------------------------------------------------------------------------
    def begin(self, slots: list[Slot]) -> OnnxPrefill:
        caches, lengths = [], []
        for slot in slots:
            slot.sampler_setup(self.device)
            reused, kv = self._lookup(slot.prompt_ids)
            reused = max(0, min(reused, len(slot.prompt_ids) - MIN_RUN))
            cache = self._lay_out(1, len(slot.prompt_ids))  # with room to decode in, if it runs alone (`_join`)
            for layer, (k, v) in enumerate(kv):
                cache.keys[layer][0, :, :reused] = k[:, :reused].numpy()
                cache.values[layer][0, :, :reused] = v[:, :reused].numpy()
            slot.cached_tokens = reused
            caches.append(cache)
            lengths.append(reused)
        return OnnxPrefill(slots, caches, lengths, [None] * len(slots))

    def prefill(self, group: OnnxPrefill, columns: int | None = None) -> bool:
        budget = columns or float("inf")
        for row, slot in enumerate(group.slots):
            start = group.lengths[row]
            if start == len(slot.prompt_ids) or budget <= 0:
                continue
            end = int(min(len(slot.prompt_ids), start + budget))
            if len(slot.prompt_ids) - end < MIN_RUN:
                end = len(slot.prompt_ids)
            logits = self.model.run(np.asarray([slot.prompt_ids[start:end]]), group.caches[row],
                                    np.asarray([start]))
            group.lengths[row], budget = end, budget - (end - start)
            if end == len(slot.prompt_ids):
                group.logits[row] = logits[0].copy()
        if any(logits is None for logits in group.logits):
            return False
        first = self._choose(np.stack(group.logits), group.slots)
        for slot, token in zip(group.slots, first, strict=True):  # first tokens first: storing keys can wait
            self._accept(slot, token)
        for slot, cache in zip(group.slots, group.caches, strict=True):
            self._remember(slot.prompt_ids, cache)
        self._join(group)
        self.prune()
        return True

    # -- the running batch's cache -----------------------------------------------------------------------------
    def _remember(self, ids: list[int], cache: KVCache) -> None:
        """Store the keys/values of a prompt just read (the first len(ids) columns of a one-row cache)."""
        if self.prefix_cache is None:
            return
        n = len(ids)
        self.prefix_cache.store(ids, [(torch.from_numpy(k[0, :, :n].copy()), torch.from_numpy(v[0, :, :n].copy()))
                                      for k, v in zip(cache.keys, cache.values, strict=True)])

    def _lay_out(self, rows: int, longest: int) -> KVCache:
        return self.model.cache(rows, _capacity(longest))

    def _join(self, group: OnnxPrefill) -> None:
        """Copy the group's rows into a new cache after the running rows; a lone row with none running decodes in
        the cache it was read in (no copy between its first token and its next)."""
        lengths = np.concatenate([self.lengths, np.asarray(group.lengths, np.int64)])
        if not self.slots and len(group.caches) == 1:
            self.cache, self.lengths, self.slots = group.caches[0], lengths, list(group.slots)
            return
        cache = self._lay_out(len(lengths), int(lengths.max()))
        if self.cache is not None and len(self.slots):
            cache.copy_rows(self.cache, list(range(len(self.slots))), 0, int(self.lengths.max()))
        for i, (one, length) in enumerate(zip(group.caches, group.lengths, strict=True)):
            cache.copy_rows(one, [0], len(self.slots) + i, length)
        self.cache, self.lengths = cache, lengths
        self.slots = self.slots + list(group.slots)

    def _keep(self, keep: list[int]) -> None:
        if not keep:
            self.slots, self.cache, self.lengths = [], None, np.zeros(0, np.int64)
            return
        lengths = self.lengths[keep]
        cache = self._lay_out(len(keep), int(lengths.max()))
        cache.copy_rows(self.cache, keep, 0, int(lengths.max()))
        self.cache, self.lengths = cache, lengths
        self.slots = [self.slots[i] for i in keep]

    def prune(self) -> None:
        """Drop the finished rows. Unlike the torch runner's, their answers' keys are not stored: those were
        computed a token at a time, and reusing them would make the next turn's answer differ from the one a fresh
        read of the same conversation gives; the next turn reuses the previous prompt and reads the answer anew."""
        keep = [i for i, slot in enumerate(self.slots) if slot.finish_reason is None]
        if len(keep) < len(self.slots):
            self._keep(keep)

    def reset(self) -> None:
        self._keep([])

    # -- decoding ----------------------------------------------------------------------------------------------
    def step(self) -> None:
        """Decode one token for every unfinished row, in one run of the model."""
        self.prune()
        if not self.slots:
            return
        if int(self.lengths.max()) + 1 > self.cache.capacity:
            self._keep(list(range(len(self.slots))))  # re-laid with HEADROOM more columns
        pending = np.asarray([[slot.pending] for slot in self.slots], np.int64)
        logits = self.model.run(pending, self.cache, self.lengths)
        self.lengths += 1
        for slot, token in zip(self.slots, self._choose(logits, self.slots), strict=True):
            self._accept(slot, token)
