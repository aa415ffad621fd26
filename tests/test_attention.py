"""The attention view through core, on the bundled model (grouped-query attention: 9 query heads on 3 key/value
heads) and the Phi-3-shaped fixture: its weights are transformers' own eager ones, causal rows summing to 1, one map
per query head, and the shared model goes back to SDPA between and after the view's steps."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from transformers import Phi3Config

from core.engine.lean_step import shared_step
from core.engine.settings import GenerationSettings
from core.engine.zerogpu_engine import ZeroGPUChatEngine
from core.errors import InvalidInputError
from core.inside.attention import (
    CHUNK_TOKENS,
    CPU_TOKENS,
    MAX_ATTENTION_TOKENS,
    MAX_SENT_WEIGHTS,
    ROLES,
    attention,
    attention_weights,
    role,
    sent,
    shares,
)
from tests.inside_cases import run
from tests.streams import collect

CAPITAL = "The capital of France is"
STORY = ("Once upon a time, in a village by the sea, there lived an old fisherman and his wife. Every morning he "
         "rowed out past the rocks, and every evening he came back with a basket of fish. ")
GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=12)


def eager_attentions(model, ids: list[int]) -> torch.Tensor:
    """transformers' own weights, [layers, heads, tokens, tokens], from an eager copy of the model (asked once for
    `output_attentions`, transformers installs capturing hooks on a model for good: never on the shared one)."""
    twin = copy.deepcopy(model)
    twin.set_attn_implementation("eager")
    with torch.inference_mode():
        out = twin(torch.tensor([ids]), output_attentions=True)
    return torch.stack([a[0] for a in out.attentions]).float()


def implementations(model) -> set[str]:
    return {m.config._attn_implementation for m in model.modules() if hasattr(m, "config")}


# -- the weights -----------------------------------------------------------------------------------------------
def test_weights_are_transformers_eager_attentions(case):
    loaded, _ = case
    ids = loaded.tokenizer(STORY)["input_ids"]
    assert len(ids) > 2 * 8
    expected = eager_attentions(loaded.model, ids)
    weights, _ = run(attention_weights, loaded.model, ids)
    assert weights.shape == expected.shape == (loaded.model.config.num_hidden_layers,
                                               loaded.model.config.num_attention_heads, len(ids), len(ids))
    assert torch.allclose(weights, expected, atol=1e-5, rtol=0)
    chunked, _ = run(attention_weights, loaded.model, ids, [1], chunk=8)  # three calls over a growing cache
    assert torch.allclose(chunked[0], expected[1], atol=1e-5, rtol=0)
    assert implementations(loaded.model) == {"sdpa"}


def test_the_view_sends_causal_rows_that_sum_to_one(case):
    loaded, engine = case
    ids = loaded.tokenizer(STORY)["input_ids"]
    result = sent(attention(engine, STORY, max_tokens=len(ids)))
    expected = eager_attentions(loaded.model, ids)
    config = loaded.model.config
    assert (result["layers"], result["heads"]) == (config.num_hidden_layers, config.num_attention_heads)
    assert result["kv_heads"] == config.num_key_value_heads
    assert len(result["maps"]) == result["layers"] and all(len(m) == result["heads"] for m in result["maps"])
    for layer, heads in enumerate(result["maps"]):
        for head, rows in enumerate(heads):
            assert [len(row) for row in rows] == list(range(1, len(ids) + 1))  # causal: key <= query only
            assert all(sum(row) == pytest.approx(1.0, abs=len(row) * 5e-5) for row in rows)  # 4 decimals each
            flat = torch.tensor([w for row in rows for w in row], dtype=torch.float64)
            want = expected[layer, head][torch.tril_indices(len(ids), len(ids)).unbind()].double()
            assert torch.allclose(flat, want, atol=5e-5, rtol=0)
    assert expected.triu(1).abs().max() == 0  # nothing left out: eager's weights above the diagonal are zeros
    assert [t["id"] for t in result["tokens"]] == ids
    assert result["note"] == "" and result["prompt_tokens"] == len(ids)


def test_grouped_query_heads_are_one_map_each_and_differ(bundled, parts):
    config = bundled.model.config
    assert config.num_attention_heads > config.num_key_value_heads  # SmolLM2: 9 query heads on 3 key/value heads
    ids = bundled.tokenizer(STORY)["input_ids"]
    weights, _ = run(attention_weights, bundled.model, ids)
    assert weights.shape[1] == config.num_attention_heads
    group = config.num_attention_heads // config.num_key_value_heads
    for layer in range(weights.shape[0]):
        assert not torch.allclose(weights[layer, 0], weights[layer, 1], atol=1e-3)  # same key/value head 0
    result = attention(parts.engine, STORY, layer=3)
    assert [s["kv_head"] for s in result["summary"][3]] == [h // group for h in range(config.num_attention_heads)]


def test_a_forward_pass_in_another_thread_keeps_sdpa_meanwhile(bundled):
    """The eager switch is this thread's: a chat decoding in another thread (the ZeroGPU engine's helpers) computes
    exactly what it computes alone, and no other thread's pass reaches the capture."""
    model = bundled.model
    ids = bundled.tokenizer(STORY)["input_ids"]
    expected = eager_attentions(model, ids)
    probe = torch.tensor([bundled.tokenizer(CAPITAL)["input_ids"]])
    with torch.inference_mode():
        alone = model(probe).logits
    seen: list[str] = []
    same: list[bool] = []
    stop = threading.Event()

    def other() -> None:
        me = threading.get_ident()

        def record(_module, _args) -> None:
            if threading.get_ident() == me:
                seen.append(model.model.layers[0].self_attn.config._attn_implementation)

        hook = model.model.layers[0].self_attn.register_forward_pre_hook(record)
        try:
            with torch.inference_mode():
                while not stop.is_set():
                    same.append(torch.equal(model(probe).logits, alone))
        finally:
            hook.remove()

    thread = threading.Thread(target=other)
    thread.start()
    try:
        for _ in range(3):
            weights, _ = run(attention_weights, model, ids, chunk=8)
            assert torch.allclose(weights, expected, atol=1e-5, rtol=0)
    finally:
        stop.set()
        thread.join()
    assert len(seen) == len(same) >= 2 and set(seen) == {"sdpa"} and all(same)
    assert implementations(model) == {"sdpa"}


# -- the per-head summary ------------------------------------------------------------------------------------------
def test_shares_and_roles_on_a_hand_checked_case():
    previous = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0.1, 0.8, 0.1, 0], [0.0, 0.2, 0.7, 0.1]])
    first = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0.8, 0.1, 0.1, 0], [0.6, 0.2, 0.1, 0.1]])
    same = torch.tensor([[1.0, 0, 0, 0], [0.4, 0.6, 0, 0], [0.2, 0.2, 0.6, 0], [0.1, 0.1, 0.1, 0.7]])
    mixed = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.3, 0.4, 0.3, 0], [0.4, 0.2, 0.2, 0.2]])
    got = shares(torch.stack([previous, first, same, mixed]))
    # queries 1..3 of each: (first, previous, same) on keys 0, q - 1, q
    assert torch.allclose(got, torch.tensor([
        [(1.0 + 0.1 + 0.0) / 3, (1.0 + 0.8 + 0.7) / 3, (0.0 + 0.1 + 0.1) / 3],
        [(0.9 + 0.8 + 0.6) / 3, (0.9 + 0.1 + 0.1) / 3, (0.1 + 0.1 + 0.1) / 3],
        [(0.4 + 0.2 + 0.1) / 3, (0.4 + 0.2 + 0.1) / 3, (0.6 + 0.6 + 0.7) / 3],
        [(0.5 + 0.3 + 0.4) / 3, (0.5 + 0.4 + 0.2) / 3, (0.5 + 0.3 + 0.2) / 3]], dtype=torch.float64), atol=1e-7)
    assert [role(*row) for row in got.tolist()] == ["previous token", "first token", "same token", ""]
    assert role(0.5, 0.5, 0.0) == "first token"  # a two-token text: the first token is the previous one
    assert role(0.49, 0.3, 0.21) == ""


def test_the_summary_is_the_maps_shares(parts):
    result = sent(attention(parts.engine, STORY, max_tokens=40, layer=5))
    maps = result["maps"][5]
    for head, summary in enumerate(result["summary"][5]):
        rows = maps[head]
        first = sum(rows[q][0] for q in range(1, 40)) / 39
        previous = sum(rows[q][q - 1] for q in range(1, 40)) / 39
        same = sum(rows[q][q] for q in range(1, 40)) / 39
        assert (summary["first"], summary["previous"], summary["same"]) == pytest.approx((first, previous, same),
                                                                                         abs=2e-4)
        assert summary["role"] == role(summary["first"], summary["previous"], summary["same"])
        assert summary["role"] in ("", *ROLES)
    assert all(m is None for i, m in enumerate(result["maps"]) if i != 5)
    roles = [s["role"] for layer in result["summary"] for s in layer]
    assert "first token" in roles  # a trained model parks attention on its first token in many heads
    assert "previous token" in roles


def test_a_one_token_text_has_no_shares(parts):
    result = sent(attention(parts.engine, "Hello", layer=0))
    assert result["maps"][0][0] == [[1.0]]
    assert result["summary"][0][0] == {"layer": 0, "head": 0, "kv_head": 0, "first": None, "previous": None,
                                       "same": None, "role": ""}


# -- what the view covers ------------------------------------------------------------------------------------------
def test_a_long_text_covers_its_first_tokens_and_says_so(parts, bundled):
    text = STORY * 6
    ids = bundled.tokenizer(text)["input_ids"]
    assert len(ids) > MAX_ATTENTION_TOKENS
    result = attention(parts.engine, text, layer=0)
    assert [t["id"] for t in result["tokens"]] == ids[:CPU_TOKENS]
    assert result["note"] == f"Covering the first {CPU_TOKENS} of {len(ids)} tokens: later tokens do not change " \
                             "their attention."
    widest = sent(attention(parts.engine, text, max_tokens=MAX_ATTENTION_TOKENS, layer=29))
    assert len(widest["maps"][29][0]) == MAX_ATTENTION_TOKENS > CHUNK_TOKENS


def test_every_layer_s_maps_stay_within_the_payload_limit(parts, bundled):
    config = bundled.model.config
    maps = config.num_hidden_layers * config.num_attention_heads
    result = sent(attention(parts.engine, STORY * 2, max_tokens=60))  # every layer: 270 maps of 60 rows
    assert sum(len(row) for layer in result["maps"] for head in layer for row in head) == maps * 60 * 61 // 2
    fit = max(n for n in range(1, 257) if maps * n * (n + 1) // 2 <= MAX_SENT_WEIGHTS)
    with pytest.raises(InvalidInputError, match=rf"All 30 layers' maps over 200 tokens would be 5,427,000 weights; "
                                                rf"the limit is 1,000,000\. Pick one layer, or at most {fit} tokens\."):
        attention(parts.engine, STORY * 6, max_tokens=200)
    assert len(sent(attention(parts.engine, STORY * 6, max_tokens=200, layer=0))["maps"][0][0]) == 200


def test_chat_reads_the_prompt_the_chat_builds(parts):
    result = attention(parts.engine, "Hi there", chat=True, layer=0)
    prompt = parts.engine.prompt("Hi there", [], "", max_new_tokens=1)
    assert [t["id"] for t in result["tokens"]] == prompt.ids[:CPU_TOKENS]
    assert result["prompt"] == prompt.text and result["prompt_tokens"] == len(prompt.ids)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"text": ""}, "Type a text first"),
    ({"text": "   "}, "Type a text first"),
    ({"layer": 30}, "layer must be a whole number from 0 to 29; got the number 30"),
    ({"layer": -1}, "layer must be a whole number from 0 to 29"),
    ({"layer": "3"}, "layer must be a whole number"),
    ({"max_tokens": 0}, "max_tokens must be a whole number from 1 to 256"),
    ({"max_tokens": MAX_ATTENTION_TOKENS + 1}, "max_tokens must be a whole number from 1 to 256; got the number 257"),
    ({"text": "x" * 50_001}, "The text is 50,001 characters; the limit is 50,000"),
    ({"chat": "yes"}, "chat must be true or false"),
])
def test_bad_input_gets_a_sentence(parts, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        attention(parts.engine, **({"text": CAPITAL} | kwargs))


def test_text_beyond_the_context_is_refused(phi3_engine, phi3_tiny):
    text = "word " * (phi3_tiny.context_length + 10)
    with pytest.raises(InvalidInputError, match=r"The text is [\d,]+ tokens; the model reads at most 4,096"):
        attention(phi3_engine, text, layer=0)


# -- the shared model afterwards -----------------------------------------------------------------------------------
def test_the_model_keeps_sdpa_and_the_chat_still_works(bundled, parts):
    before = collect(parts.engine.chat("Name a colour.", [], "", GREEDY))
    attention(parts.engine, STORY, layer=0)
    assert implementations(bundled.model) == {"sdpa"}
    assert shared_step(bundled.model) is not None  # the lean step still takes the float32 model
    assert all(not m._forward_hooks for m in bundled.model.modules())
    assert collect(parts.engine.chat("Name a colour.", [], "", GREEDY)) == before


def test_decoding_steps_between_the_view_s_steps_run_sdpa(phi3_tiny, phi3_engine):
    """The chat decodes on the worker between two steps of the view, whose passes run in a thread of their own that
    stops within them (core/inside/stepping.py): eager is that thread's only, step by step."""
    seen: list[tuple[str, str, int]] = []  # (thread, implementation, width) of each forward call, in order
    worker = phi3_engine._worker.ident

    def record(_module, _args, kwargs) -> None:
        ids = kwargs.get("input_ids")
        who = "worker" if threading.get_ident() == worker else threading.current_thread().name
        seen.append((who, phi3_tiny.model.config._attn_implementation, ids.shape[-1] if ids is not None else -1))

    alone = collect(phi3_engine.chat("Tell me a story.", [], "", GenerationSettings(temperature=0.0,
                                                                                     max_new_tokens=48)))
    # the decoder: the chat's steps run it inside the whole model, the view's passes run it alone
    hook = phi3_tiny.model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
    try:
        stream = phi3_engine.chat("Tell me a story.", [], "", GenerationSettings(temperature=0.0, max_new_tokens=48))
        attention(phi3_engine, STORY * 8, max_tokens=MAX_ATTENTION_TOKENS - 1, layer=1)  # 8 calls, last one 31 wide
        during = collect(stream)
    finally:
        hook.remove()
    view = [i for i, (who, _, _) in enumerate(seen) if who == "token-lab-view-pass"]
    assert len(view) == -(-(MAX_ATTENTION_TOKENS - 1) // CHUNK_TOKENS)
    assert all(seen[i][1] == "eager" and seen[i][2] > 1 for i in view)  # the view's chunks
    assert all(how == "sdpa" for who, how, _ in seen if who == "worker")  # every chat step
    assert any(who == "worker" and width == 1 for who, _, width in seen[view[0]:view[-1]])  # the chat decoded between
    assert during == alone
    assert implementations(phi3_tiny.model) == {"sdpa"}


def test_zerogpu_engine_runs_the_view_in_its_gpu_call(bundled, parts):
    """Off ZeroGPU the GPU call is a plain call, in the request's thread: the local engine's result."""
    engine = ZeroGPUChatEngine(bundled)
    try:
        assert sent(attention(engine, CAPITAL)) == sent(attention(parts.engine, CAPITAL))
    finally:
        engine.close()


def test_the_view_leaves_the_shared_model_picklable(phi3_tiny, phi3_engine, tmp_path):
    attention(phi3_engine, STORY)
    assert {type(m.config) for m in phi3_tiny.model.modules() if hasattr(m, "config")} == {Phi3Config}  # not the
    # per-thread subclass of the view's forward calls
    torch.save(phi3_tiny.model, tmp_path / "model.pt")
