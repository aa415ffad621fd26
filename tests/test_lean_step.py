"""The lean decoding step and its static-cache decoder change no answer: its logits equal the transformers forward's
bit for bit, and greedy chats through the engine equal plain `model.generate` (float32), across re-seatings of the
static cache and in a batch. The views' forward passes on the lean step equal transformers' too."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from core.config import RequestLimits
from core.engine import lean_decoder
from core.engine.batch_decoder import BatchDecoder
from core.engine.jobs import finish
from core.engine.lean_step import LeanLlamaStep, shared_step, supports
from core.engine.local import ChatEngine
from core.engine.settings import GenerationSettings
from core.inside import forward
from core.inside.anatomy import anatomy
from tests.streams import collect

QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "Write a story about a dragon."]
TOKENS = 40


def test_the_lean_step_serves_the_bundled_model_and_nothing_it_would_compute_differently(bundled, phi3_tiny):
    assert supports(bundled.model)
    assert not supports(phi3_tiny.model)  # another architecture: the engine keeps the transformers forward


def left_padded(rows: list[list[int]], gap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and mask of `rows`, left-padded; row 0 gets `gap` masked columns after its first 5 tokens, as a row that
    reused a shorter cached prefix has."""
    width = max(len(r) for r in rows) + gap
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        start = width - len(r) - (gap if i == 0 else 0)
        if i == 0 and gap:
            ids[i, start:start + 5], mask[i, start:start + 5] = torch.tensor(r[:5]), 1
            ids[i, width - len(r) + 5:], mask[i, width - len(r) + 5:] = torch.tensor(r[5:]), 1
        else:
            ids[i, start:], mask[i, start:] = torch.tensor(r), 1
    return ids, mask


@pytest.mark.parametrize("count,gap", [(1, 0), (1, 7), (3, 0), (3, 7)],
                         ids=["lone row", "lone row with a masked gap", "3 padded rows", "3 rows, one with a gap"])
def test_lean_logits_equal_the_transformers_forward_bit_for_bit(bundled, count, gap):
    model, tokenizer = bundled.model, bundled.tokenizer
    rows = [tokenizer(q)["input_ids"] for q in QUESTIONS[:count]]
    ids, mask = left_padded(rows, gap)
    cache = DynamicCache()
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                    past_key_values=cache, use_cache=True)
        pending = out.logits[:, -1].argmax(-1)
        steps, n = 6, mask.shape[1]
        keys = [torch.zeros(count, layer.keys.shape[1], n + steps, layer.keys.shape[3]) for layer in cache.layers]
        values = [torch.zeros_like(k) for k in keys]
        for k, v, layer in zip(keys, values, cache.layers, strict=True):
            k[:, :, :n], v[:, :, :n] = layer.keys, layer.values
        lean_mask = torch.ones(count, n + steps, dtype=torch.bool)
        lean_mask[:, :n] = mask.bool()
        step = LeanLlamaStep(model)
        step.reserve(n + steps + 1)
        for i in range(steps):
            positions = mask.sum(1)
            mask = torch.cat([mask, torch.ones(count, 1, dtype=torch.long)], dim=1)
            expected = model(input_ids=pending[:, None], attention_mask=mask, position_ids=positions[:, None],
                             past_key_values=cache, use_cache=True).logits[:, -1]
            got = step(pending, positions, keys, values, n + i, lean_mask if gap or count > 1 else None)
            assert torch.equal(got, expected), f"step {i}: max |difference| {(got - expected).abs().max():.3g}"
            pending = expected.argmax(-1)


def generate_ids(loaded, ids: list[int], tokens: int) -> list[int]:
    x = torch.tensor([ids])
    out = loaded.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=tokens,
                                do_sample=False, eos_token_id=loaded.tokenizer.eos_token_id,
                                pad_token_id=loaded.tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


def test_greedy_chats_equal_plain_generate_alone_and_batched_across_reseatings(bundled, monkeypatch):
    monkeypatch.setattr(lean_decoder, "HEADROOM", 3)  # the static cache fills and is seated again every 3 tokens
    engine = ChatEngine(bundled, RequestLimits(max_queue=8), max_batch=8)
    try:
        settings = GenerationSettings(temperature=0, max_new_tokens=TOKENS)
        prompts = [engine.prompt(q, [], "", TOKENS) for q in QUESTIONS]
        expected = [generate_ids(bundled, p.ids, TOKENS) for p in prompts]
        alone = []
        for p in prompts:
            stream = engine.submit(p, settings)
            collect(stream)
            alone.append(stream.token_ids)
        streams = [engine.submit(p, settings) for p in prompts]  # queued together: decoded in one batch
        for stream in streams:
            collect(stream)
        assert engine.stats()["peak_batch"] >= 2
    finally:
        engine.close()
    assert alone == expected
    assert [s.token_ids for s in streams] == expected


def test_the_engine_decodes_with_the_lean_step_where_supported_and_says_so(bundled, phi3_tiny):
    for loaded, kind, said in ((bundled, lean_decoder.LeanBatchDecoder, True), (phi3_tiny, BatchDecoder, False)):
        engine = ChatEngine(loaded, RequestLimits(max_queue=2), max_batch=2)
        try:
            assert engine.decoder_class is kind
            assert ("lean decoding step" in engine.describe()) is said
        finally:
            engine.close()


def views_forward(loaded, rows: list[list[int]], keep: list[range], chunk: int, lean: bool, monkeypatch):
    """The residual stream and last logits the views compute, on the lean step or (lean=False) on transformers."""
    with monkeypatch.context() as patch:
        if not lean:
            patch.setattr(forward, "shared_step", lambda model: None)
        with torch.inference_mode():
            stream = finish(forward.residual_stream(loaded.model, anatomy(loaded.model), rows, keep, chunk))
            logits = finish(forward.last_logits(loaded.model, rows[0], chunk))
    return stream, logits


@pytest.mark.parametrize("lengths,chunk", [((40,), 128), ((40, 9), 128), ((129,), 64), ((150, 70), 64)],
                         ids=["one row", "two right-padded rows", "three chunks, the last of one column",
                              "two rows over three chunks"])
def test_the_views_forward_on_the_lean_step_equals_transformers_bit_for_bit(bundled, lengths, chunk, monkeypatch):
    ids = bundled.tokenizer(" ".join(QUESTIONS) * 12)["input_ids"]
    rows = [ids[i:i + n] for i, n in enumerate(lengths)]
    keep = [range(0, n) for n in lengths]
    lean_stream, lean_logits = views_forward(bundled, rows, keep, chunk, True, monkeypatch)
    stream, logits = views_forward(bundled, rows, keep, chunk, False, monkeypatch)
    assert lean_stream[0].shape == (bundled.model.config.num_hidden_layers + 1, lengths[0], 576)
    for got, expected in zip(lean_stream, stream, strict=True):
        assert torch.equal(got, expected), f"max |difference| {(got - expected).abs().max():.3g}"
    assert torch.equal(lean_logits, logits)


def test_the_decoder_and_the_views_share_one_lean_step(bundled, phi3_tiny):
    step = shared_step(bundled.model)
    assert step is not None and shared_step(bundled.model) is step
    assert lean_decoder.LeanBatchDecoder(bundled.model, stop_ids=[0]).lean is step  # one copy of the fused weights
    assert shared_step(phi3_tiny.model) is None


@pytest.mark.parametrize("count,gap", [(1, 0), (1, 7), (3, 0), (3, 7)],
                         ids=["lone row", "lone row with a masked gap", "3 padded rows", "3 rows, one with a gap"])
def test_a_prompt_fed_in_chunks_through_the_lean_step_equals_transformers_bit_for_bit(bundled, count, gap):
    """What the chat's prefill computes (LeanBatchDecoder._feed): left-padded rows with their masks and positions,
    fed in chunks of 5 columns and then one column, onto the same cache."""
    model, tokenizer = bundled.model, bundled.tokenizer
    ids, mask = left_padded([tokenizer(q)["input_ids"] for q in QUESTIONS[:count]], gap)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    step, lean_cache, cache = shared_step(model), DynamicCache(), DynamicCache()
    width = ids.shape[1]
    with torch.inference_mode():
        for start, end in ((0, 5), (5, width - 1), (width - 1, width)):
            got = step.logits(step.forward(ids[:, start:end], positions[:, start:end], mask[:, :end],
                                           lean_cache)[-1][:, -1])
            expected = model(input_ids=ids[:, start:end], attention_mask=mask[:, :end],
                             position_ids=positions[:, start:end], past_key_values=cache, use_cache=True,
                             logits_to_keep=1).logits[:, -1]
            assert torch.equal(got, expected), f"columns {start}..{end}: {(got - expected).abs().max():.3g}"
    for lean_layer, layer in zip(lean_cache.layers, cache.layers, strict=True):
        assert torch.equal(lean_layer.keys, layer.keys) and torch.equal(lean_layer.values, layer.values)
