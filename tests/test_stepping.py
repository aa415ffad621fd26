"""A view's passes in short stretches (core/inside/stepping.py), on the bundled model: the same result as the pass
in one go, a stop before every sublayer (and, backward, at every sublayer's output gradient) when stretches are
shortest and none within a pass when they are endless, nothing computed while the caller holds the step, and a closed
generator that ends its pass thread."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from core.inside import stepping
from core.inside.stepping import in_steps, stepped, sublayer_stops, sublayers
from core.work.fair_share import CHAT_STRETCH, IDLE_STRETCH


def drive(steps) -> tuple[int, object]:
    """Run a step generator to its end: how many steps it yielded, and what it returned."""
    count = 0
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return count, end.value
        count += 1


@pytest.fixture(scope="module")
def small_llama():
    """A random three-layer Llama with plain linear layers (the loaded CPU model's are packed and have no backward
    of their own; core/inside/attribution.py carries gradients through them)."""
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def drive_counting_calls(model, work) -> tuple[int, object, int]:
    """`drive` over `work`'s steps: how many steps, what it returned, and how many forward calls the model's
    sublayers took meanwhile (counted by hooks of the test's own)."""
    calls = [0]

    def count(*_args) -> None:
        calls[0] += 1

    hooks = [m.register_forward_pre_hook(count) for m in sublayers(model)]
    try:
        count_, value = drive(in_steps(work, (0, 1, "working")))
    finally:
        for hook in hooks:
            hook.remove()
    return count_, value, calls[0]


@pytest.mark.parametrize("stretch_s", [0.0, float("inf")])
def test_a_forward_pass_stops_before_each_sublayer_when_due_and_gives_the_same_logits(bundled, stretch_s):
    model, ids = bundled.model, torch.tensor([[1, 504, 3575, 282, 4649, 314]])
    with torch.inference_mode():
        expected = model(input_ids=ids).logits

    def work(stop):
        with torch.inference_mode(), sublayer_stops(model, stop, stretch_s):
            return model(input_ids=ids).logits

    count, logits, calls = drive_counting_calls(model, work)
    assert calls >= 7 * model.config.num_hidden_layers + 1  # every layer's projections, norms, activation; the head
    # at the shortest stretches: once per sublayer as its hooks are set up, then before each call
    assert count == (len(sublayers(model)) + calls if stretch_s == 0 else 0)
    assert torch.equal(logits, expected)


def test_a_backward_pass_stops_at_every_sublayer_and_gives_the_same_gradient(small_llama):
    model = small_llama
    rows = model.get_input_embeddings()(torch.tensor([1, 50, 35, 28])).detach()

    def gradient() -> torch.Tensor:
        x = rows.clone().unsqueeze(0).requires_grad_()
        logits = model(inputs_embeds=x, use_cache=False, logits_to_keep=1).logits[0, -1]
        return torch.autograd.grad(torch.log_softmax(logits, -1)[0], [x])[0]

    with torch.enable_grad():
        expected = gradient()

    def work(stop):
        with torch.enable_grad(), sublayer_stops(model, stop, 0.0):
            return gradient()

    count, grad, calls = drive_counting_calls(model, work)
    # once per sublayer as its hooks are set up; forward before each call, then at each one's output gradient
    assert count == len(sublayers(model)) + 2 * calls
    assert torch.equal(grad, expected)


def test_nothing_runs_while_the_caller_holds_its_step(bundled):
    model, ids = bundled.model, torch.tensor([[1, 504, 3575, 282]])
    layers_run: list[int] = []
    hooks = [layer.register_forward_hook(lambda *_a, i=i: layers_run.append(i))
             for i, layer in enumerate(model.model.layers)]

    def passes():
        model(input_ids=ids)
        yield 1, 1, "read"
        return "done"

    try:
        gen = stepped(model, passes())
        next(gen)
        seen = len(layers_run)
        threading.Event().wait(0.2)  # the pass thread is stopped: no layer runs meanwhile
        assert len(layers_run) == seen
        count, value = drive(gen)
        assert len(layers_run) == model.config.num_hidden_layers and value == "done" and count > 0
    finally:
        for hook in hooks:
            hook.remove()


def test_closing_the_generator_ends_the_pass_thread(bundled):
    model, ids = bundled.model, torch.tensor([[1, 504, 3575, 282]])

    def passes():
        model(input_ids=ids)
        yield 1, 1, "read"

    before = {t.name for t in threading.enumerate()}
    gen = stepped(model, passes())
    next(gen)
    next(gen)
    gen.close()
    assert not [t for t in threading.enumerate() if t.name == "token-lab-view-pass" and t.name not in before]
    with torch.inference_mode():
        assert model(input_ids=ids).logits.shape[1] == 4  # no hook left behind
    assert all(not layer._forward_pre_hooks for layer in model.model.layers)


def test_each_stretch_computes_on_the_threads_the_worker_gives_it():
    """While chats run a pass computes on one torch thread (a second spins on after the stretch, on the core the
    next decoding step needs); with none it uses torch's default; the caller's own count never changes."""
    default = torch.get_num_threads()
    if default < 2:
        pytest.skip("torch runs on one thread here: nothing to tell apart")
    seen = []

    def work(stop) -> str:
        for _ in range(2):
            seen.append(torch.get_num_threads())
            stop()
        seen.append(torch.get_num_threads())
        return "done"

    steps = in_steps(work, (0, 1, "working"))
    next(steps)  # the first stretch, before the worker says how: on the default threads
    steps.send(CHAT_STRETCH)
    with pytest.raises(StopIteration) as end:
        steps.send(IDLE_STRETCH)
    assert end.value.value == "done"
    assert seen == [default, 1, default]
    assert torch.get_num_threads() == default


def test_an_attribution_reaches_the_worker_in_short_stretches(bundled_host, monkeypatch):
    """Through the engine as the app runs it: with the shortest stretches, one gradient × input (a forward and a
    backward pass) reaches the worker in at least two steps per sublayer (the fair share counts every step it lets
    run)."""
    from core.inside.attribution import attribution
    from core.work import fair_share

    for name in ("CHAT_STRETCH", "IDLE_STRETCH"):  # what the worker sends with each step
        monkeypatch.setattr(fair_share, name, fair_share.Stretch(0.0))
    monkeypatch.setattr(stepping, "STRETCH", fair_share.Stretch(0.0))  # the first stretch's
    engine, share = bundled_host.require().engine, bundled_host.work.share
    before = share.stats()["heavy_steps"]
    result = attribution(engine, "The capital of France is", method="grad_x_input")
    assert result["target"]["text"] == " Paris"
    assert share.stats()["heavy_steps"] - before >= 2 * len(sublayers(bundled_host.require().loaded.model))
