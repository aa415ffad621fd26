"""Attribution through core, on the bundled model and the Phi-3-shaped fixture, against a straightforward autograd
computation on an unpacked copy of the model: gradient × input is the gradient of the target's log-probability times
the rows, integrated gradients follow their definition (from the baseline of " the"s, by the trapezoid rule over
evenly spread and then halving points) and add up to the change in log-probability on realistic inputs, the tokens
the baseline keeps score 0, and the shared model keeps no gradients, hooks or changed flags."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from bench.bench_inside import text_of
from core.engine.settings import GenerationSettings
from core.engine.zerogpu_engine import ZeroGPUChatEngine
from core.errors import InvalidInputError
from core.inside.attribution import MAX_ATTRIBUTION_TOKENS, _compute, attribution, attribution_of_ids
from core.model.packed_linear import PackedLinear
from tests.streams import collect

CAPITAL = "The capital of France is"
BANK = "I opened a bank account and deposited my"
GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=12)


_PLAIN: dict[int, nn.Module] = {}


def plain(model: nn.Module) -> nn.Module:
    """A copy of the model with ordinary nn.Linear layers (the packed ones have no backward), for plain autograd."""
    if id(model) not in _PLAIN:
        twin = copy.deepcopy(model)
        for parent in list(twin.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, PackedLinear):
                    linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                    linear.weight = nn.Parameter(child.weight.clone())
                    linear.bias = child.bias
                    setattr(parent, name, linear)
        _PLAIN[id(model)] = twin
    return _PLAIN[id(model)]


def logprob_and_grad(model: nn.Module, rows: torch.Tensor, target: int | None) -> tuple[float, torch.Tensor, int]:
    """log p(target) after `rows` [tokens, hidden], its gradient with respect to them, and the target (None: argmax)."""
    x = rows.clone().detach().requires_grad_()
    logprobs = torch.log_softmax(model(inputs_embeds=x[None]).logits[0, -1].float(), dim=-1)
    target = int(logprobs.argmax()) if target is None else target
    [grad] = torch.autograd.grad(logprobs[target], [x])
    return float(logprobs[target].detach()), grad, target


def embedded(model: nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.get_input_embeddings()(torch.tensor(ids))


def the_id(loaded) -> int:
    """The word " the" as the vocabulary writes it after another word."""
    vocab = loaded.tokenizer.get_vocab()
    return vocab["Ġthe"] if "Ġthe" in vocab else vocab["▁the"]


def kept_ids(loaded) -> set[int]:
    tokenizer = loaded.tokenizer
    return set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)


def the_baseline_ids(loaded, ids: list[int]) -> list[int]:
    """The first token and the special tokens as they are, " the" in place of every other token."""
    return [t if i == 0 or t in kept_ids(loaded) else the_id(loaded) for i, t in enumerate(ids)]


def chat_ids(engine, loaded, question: str, answer: str) -> tuple[list[int], int]:
    """A chat's prompt (through the template) and answer, and where the answer starts."""
    prompt = engine.prompt(question, [], "", max_new_tokens=12).ids
    return prompt + loaded.tokenizer.encode(answer, add_special_tokens=False), len(prompt)


def steps_of(fn, *args):
    """Drive a model-side generator as the engine's worker does; (its result, what it yielded)."""
    steps, reached = fn(*args), []
    while True:
        try:
            with torch.inference_mode():
                reached.append(next(steps))
        except StopIteration as done:
            return done.value, reached


# -- the scores ----------------------------------------------------------------------------------------------------
def test_grad_x_input_is_the_gradient_times_the_rows(case):
    loaded, engine = case
    ids = loaded.tokenizer(CAPITAL)["input_ids"]
    reference = plain(loaded.model)
    logprob, grad, target = logprob_and_grad(reference, embedded(reference, ids), None)
    result = attribution(engine, CAPITAL, method="grad_x_input")
    assert result["target"]["id"] == target  # the default target: the most likely next token
    assert result["target"]["rank"] == 1 and result["target"]["index"] == len(ids)
    assert result["logprob_input"] == pytest.approx(logprob, abs=1e-4)
    expected = (grad * embedded(reference, ids)).sum(-1)
    assert torch.allclose(torch.tensor(result["grad_x_input"]), expected, rtol=1e-3, atol=1e-4)
    assert result["integrated_gradients"] is result["steps"] is result["completeness_error"] is None
    assert [t["id"] for t in result["tokens"]] == ids


def test_integrated_gradients_follow_their_definition(case):
    """The trapezoid rule from the baseline of " the"s, computed plainly on the unpacked copy at 4 steps: the path's
    ends, 1/3 and 2/3, then twice the middle of the interval whose trapezoid misses its change in log p the most."""
    loaded, engine = case
    ids = loaded.tokenizer(BANK)["input_ids"]
    reference = plain(loaded.model)
    rows, base = embedded(reference, ids), embedded(reference, the_baseline_ids(loaded, ids))
    _, _, target = logprob_and_grad(reference, rows, None)
    points = {}  # α: (log p(target), each token's ⟨∇, e − b⟩)

    def at(alpha: float) -> None:
        logprob, grad, _ = logprob_and_grad(reference, base + alpha * (rows - base), target)
        points[alpha] = (logprob, (grad * (rows - base)).sum(-1))

    def miss(a: float, b: float) -> float:
        return abs(points[b][0] - points[a][0] - (b - a) * float(points[a][1].sum() + points[b][1].sum()) / 2)

    for alpha in (0.0, 1.0, 1 / 3, 2 / 3):
        at(alpha)
    for _ in range(2):
        a, b = max(itertools.pairwise(sorted(points)), key=lambda ab: miss(*ab))
        at((a + b) / 2)
    alphas = sorted(points)
    expected = sum((b - a) / 2 * (points[a][1] + points[b][1]) for a, b in itertools.pairwise(alphas))
    steps = 4
    result = attribution(engine, BANK, target=target, steps=steps)
    assert torch.allclose(torch.tensor(result["integrated_gradients"]), expected, rtol=1e-3, atol=1e-3)
    assert result["integrated_gradients"][0] == 0.0  # the first token is the baseline's too
    assert result["logprob_baseline"] == pytest.approx(points[0.0][0], abs=1e-4)
    difference = result["logprob_input"] - result["logprob_baseline"]
    assert result["completeness_error"] == pytest.approx(abs(sum(result["integrated_gradients"]) - difference))
    assert result["steps"] == steps and result["grad_x_input"] is not None


def test_a_chat_answer_token_adds_up_and_the_tokens_kept_score_0(parts, bundled):
    """Completeness on a chat: the prompt through SmolLM2's template and the first 4 tokens of the torch model's
    greedy answer, "The capital of France is Paris.", attributing " is". At 32 steps their sum is within a tenth of
    log p(x) − log p(baseline) (measured 0.20 of a 5.4 difference; from the padding token's baseline by the midpoint
    rule it was 15 of 3.9). The first token, the template's special tokens and the text's own " the"s are the
    baseline's too: they score 0, and the note counts them."""
    chat, answer = chat_ids(parts.engine, bundled, "What is the capital of France?", "The capital of France is Paris.")
    result = attribution_of_ids(parts.engine, chat, answer + 4, method="integrated_gradients", steps=32)
    ids = chat[:answer + 4]
    difference = result["logprob_input"] - result["logprob_baseline"]
    assert abs(difference) > 2  # the baseline is far from the text: the test has something to add up
    assert result["completeness_error"] == pytest.approx(abs(sum(result["integrated_gradients"]) - difference),
                                                         abs=1e-4)
    assert result["completeness_error"] < 0.1 * abs(difference)
    kept = [i for i, t in enumerate(ids) if i == 0 or t in kept_ids(bundled)]
    the = [i for i, t in enumerate(ids) if t == the_id(bundled)]
    assert len(kept) == 5 and len(the) == 1  # <|im_start|>, then 2 × <|im_end|> and <|im_start|>; "What is the"
    scores = result["integrated_gradients"]
    assert all(scores[i] == 0.0 for i in kept + the)
    assert sum(s != 0.0 for s in scores) == len(ids) - len(kept) - len(the)
    assert "Scores 0 where the baseline keeps the token: the first token, 4 special tokens and 1 × 'Ġthe'." \
        in result["note"]
    assert result["baseline"] == ("the text with 'Ġthe' in place of every ordinary token, its first token and "
                                  "special tokens kept")
    assert result["grad_x_input"] is None


@pytest.mark.parametrize(("text", "steps", "tolerance"), [(CAPITAL, 64, 0.05), (None, 32, 0.1)])
def test_integrated_gradients_add_up_to_the_change_in_log_probability(parts, bundled, text, steps, tolerance):
    """Completeness on plain text, relative to the change (the share the note states): the short sentence at 64
    steps (measured 0.02 of a 9.9 difference) and a 64-token English text at 32 (measured 0.03 of 3.2; from the
    padding token's baseline by the midpoint rule it was 4.3 of 3.6), whose path turns sharply in places."""
    text = text or text_of(bundled.tokenizer, 64)
    result = attribution(parts.engine, text, steps=steps, method="integrated_gradients")
    difference = result["logprob_input"] - result["logprob_baseline"]
    assert abs(difference) > 2
    assert abs(sum(result["integrated_gradients"]) - difference) < tolerance * abs(difference)
    assert result["grad_x_input"] is None and result["target"]["rank"] == 1
    error = result["completeness_error"]
    stated = f"misses the change in log-probability by {error:.2g}"
    assert (stated + f" ({error / abs(difference):.0%} of it)" if error > 0.05 else stated + ".") in result["note"]


def test_phi3_integrated_gradients_converge_on_a_smooth_path(phi3_engine):
    """On the tiny random model's smooth path the error falls at least fourfold each time the steps quadruple
    (measured 0.0068, 0.00024, 0.000025 of a 0.38 difference at 2, 8 and 32 steps)."""
    errors = [attribution(phi3_engine, BANK, steps=steps)["completeness_error"] for steps in (2, 8, 32)]
    assert errors[0] > 4 * errors[1] > 16 * errors[2]
    assert errors[2] < 0.001
    assert "'▁the' in place of every ordinary token" in attribution(phi3_engine, BANK, steps=1)["baseline"]


def test_each_forward_and_backward_pass_is_one_step(bundled):
    ids = bundled.tokenizer(CAPITAL)["input_ids"]
    base = the_baseline_ids(bundled, ids)
    _, reached = steps_of(_compute, bundled, ids, None, "both", 5, base)
    assert [(done, total) for done, total, _ in reached] == [(i, 7) for i in range(1, 8)]
    _, reached = steps_of(_compute, bundled, ids, None, "integrated_gradients", 5, base)
    assert len(reached) == 7
    _, reached = steps_of(_compute, bundled, ids, None, "grad_x_input", 5, base)
    assert len(reached) == 1


# -- the target ----------------------------------------------------------------------------------------------------
def test_a_target_by_text_piece_or_id_is_the_same_token(parts, bundled):
    paris = bundled.tokenizer.convert_tokens_to_ids("ĠParis")
    results = [attribution(parts.engine, CAPITAL, target=t, method="grad_x_input") for t in (" Paris", "ĠParis", paris)]
    assert {r["target"]["id"] for r in results} == {paris}
    assert results[0] == results[1] == results[2]
    london = attribution(parts.engine, CAPITAL, target=" London", method="grad_x_input")
    assert london["target"]["text"] == " London" and london["target"]["rank"] > 1
    assert london["logprob_input"] < results[0]["logprob_input"]


def test_the_token_of_a_sequence_is_attributed_over_the_tokens_before_it(parts, bundled):
    ids = bundled.tokenizer(CAPITAL + " Paris.")["input_ids"]
    position = len(bundled.tokenizer(CAPITAL)["input_ids"])
    of_ids = attribution_of_ids(parts.engine, ids, position, steps=4)
    of_text = attribution(parts.engine, CAPITAL, target=ids[position], steps=4)
    assert of_ids == of_text
    assert len(of_ids["tokens"]) == position and of_ids["target"]["id"] == ids[position]


def test_a_chat_answer_token_is_attributed_over_the_prompt_and_the_answer_before_it(parts):
    prompt = parts.engine.prompt("What is the capital of France?", [], "", max_new_tokens=8)
    stream = parts.engine.chat("What is the capital of France?", [], "", GREEDY)
    collect(stream)
    ids = prompt.ids + stream.token_ids
    result = attribution_of_ids(parts.engine, ids, len(ids) - 2, method="grad_x_input")
    assert result["target"]["id"] == stream.token_ids[-2]
    assert [t["id"] for t in result["tokens"]] == ids[:-2]
    assert len(result["grad_x_input"]) == len(ids) - 2


# -- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"text": ""}, "Type a text first"),
    ({"target": " Paris is"}, r"The target ' Paris is' is 2 tokens \(ĠParis, Ġis\), not one\. Type a single token"),
    ({"target": ""}, "The target is empty: type one token"),
    ({"target": 49_152}, r"Token id 49152 is not in the vocabulary \(ids 0 to 49,151\)"),
    ({"target": -1}, "Token id -1 is not in the vocabulary"),
    ({"target": 3.5}, "The target must be text"),
    ({"steps": 0}, "steps must be a whole number from 1 to 64; got the number 0"),
    ({"steps": 65}, "steps must be a whole number from 1 to 64"),
    ({"steps": "8"}, "steps must be a whole number"),
    ({"method": "saliency"}, "method must be one of both, grad_x_input, integrated_gradients; got 'saliency'"),
    ({"text": "word " * (MAX_ATTRIBUTION_TOKENS + 5)},
     r"Attribution reads at most 256 tokens before the target; there are 2[67]\d\. Shorten the text\."),
])
def test_bad_input_gets_a_sentence(parts, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        attribution(parts.engine, **({"text": CAPITAL} | kwargs))


@pytest.mark.parametrize(("ids", "position", "message"), [
    ([1], 1, "needs a target token and at least one token before it"),
    ([1, 2, 3], 0, "position must be a whole number from 1 to 2; got the number 0"),
    ([1, 2, 3], 3, "position must be a whole number from 1 to 2"),
    ([1, 2, 99_999], 1, r"Token id 99999 is not in the vocabulary"),
    ("1 2 3", 1, "The token ids must be a list of whole numbers"),
])
def test_bad_ids_get_a_sentence(parts, ids, position, message):
    with pytest.raises(InvalidInputError, match=message):
        attribution_of_ids(parts.engine, ids, position)


# -- the shared model afterwards -----------------------------------------------------------------------------------
def test_the_model_keeps_no_gradients_hooks_or_flags(case, tmp_path):
    loaded, engine = case
    flags = {name: p.requires_grad for name, p in loaded.model.named_parameters()}
    before = collect(engine.chat("Name a colour.", [], "", GREEDY))
    attribution(engine, CAPITAL, steps=2)
    assert {name: p.requires_grad for name, p in loaded.model.named_parameters()} == flags
    assert all(p.grad is None for p in loaded.model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in loaded.model.modules())
    assert collect(engine.chat("Name a colour.", [], "", GREEDY)) == before
    if loaded.model.config.model_type == "phi3":  # the small one: nothing unpicklable left on the shared model
        torch.save(loaded.model, tmp_path / "model.pt")


def test_zerogpu_engine_runs_the_view_in_its_gpu_call(bundled, parts):
    """Off ZeroGPU the GPU call is a plain call in the request's thread, outside inference mode: the same scores."""
    engine = ZeroGPUChatEngine(bundled)
    try:
        assert attribution(engine, CAPITAL, steps=2) == attribution(parts.engine, CAPITAL, steps=2)
    finally:
        engine.close()
