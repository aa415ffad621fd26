"""Which input tokens a prediction rests on: each token's contribution to the log-probability the model gives one
target token at the end of the text, by gradient × input and by integrated gradients.

Gradient × input scores token i as ⟨∂ log p(target) / ∂ eᵢ, eᵢ⟩ over its input embedding row eᵢ: a first-order
estimate of what removing the row would cost. Integrated gradients (Sundararajan et al., 2017) integrate the gradient
along the straight path from a baseline b to the input, IGᵢ = ⟨eᵢ − bᵢ, ∫₀¹ ∇ at b + α(e − b) dα⟩, and their sum is
log p(target | e) − log p(target | b) (completeness): `completeness_error` says how far this many steps are from it.

The baseline is the text with every ordinary token replaced by the word " the" (`baseline_ids`); the first token and
the special tokens (a chat template's markers) stay. A baseline of ordinary words keeps the path among inputs the
model knows: from the padding token in every place (a chat model's end-of-turn marker, repeated) or from all-zero rows
(each RMS norm blows a near-zero row up to full size) the prediction jumps back and forth along the path, too sharply
for any affordable number of steps. The first token stays because the model parks much of its attention on it (the
Attention view's "first token" heads), and the markers because a chat without them is another kind of input. A token
the baseline keeps, a " the" of the text included, scores 0 by integrated gradients; gradient × input still scores it.

The integral is the trapezoid rule over the gradients at both ends of the path (the passes that read the input and the
baseline) and at `steps` points between: half of them evenly spread, then each one in the middle of the interval
whose trapezoid misses the change in log p(target) across it (each pass gives it exactly) by the most. Even on an
ordinary baseline's path the prediction can turn within a hundredth of α; evenly spread points (the midpoint rule,
Gauss–Legendre nodes) step over such turns, the halving finds them.

The rows are the input embedding's own (`get_input_embeddings()`), read through the real transformers forward with
`inputs_embeds`, in the model's dtype with float32 log-probabilities. The passes run in stretches of a few
milliseconds (core/inside/stepping.py), so a chat sharing the model waits that long at most. The worker runs the
views under `torch.inference_mode`; each pass leaves it (`_gradients`), on fresh copies of the rows, and asks
autograd for the rows' gradient alone, so the model's parameters keep no `.grad`. The CPU model's linear layers are
oneDNN-packed (core/model/packed_linear.py) and the packed op has no backward: for the duration of the pass, a hook
gives each packed layer's input its gradient through the layer's dense weight.

    r = attribution(engine, "The capital of France is")
    r["target"]["text"], [(t["text"], round(s, 1)) for t, s in zip(r["tokens"], r["integrated_gradients"])]
    # (' Paris', [('The', 0.0), (' capital', 2.7), (' of', 0.6), (' France', 6.5), (' is', 0.3)])

    # the 7th token of a chat (prompt and answer so far), attributed over the 6 before it
    r = attribution_of_ids(engine, ids, 6)
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import threading
from collections.abc import Generator, Iterator
from typing import Any, TypedDict

import torch
from torch import nn

from core import checks
from core.engine.base import Engine
from core.errors import InvalidInputError, UnavailableError
from core.inside.anatomy import require_weights
from core.inside.contextual import TokenRef, token_ref
from core.inside.forward import Step
from core.inside.next_tokens import text_ids
from core.inside.stepping import pause_point, stepped
from core.model.loading import LoadedModel
from core.model.packed_linear import PackedLinear
from core.text.token_strings import token_strings
from core.text.tokens import special_ids
from core.work.progress import Progress

MAX_ATTRIBUTION_TOKENS = 256  # tokens attributed over: each step is a forward and a backward pass over all of them
MAX_STEPS = 64
DEFAULT_STEPS = 16
COMPLETE_ENOUGH = 0.05  # a completeness error (in nats) the note does not call out
DENSE_BYTES = 1 << 30  # dense weight copies kept for attributions on the CPU: a small model's all, a big one's part
HEAD_PART_BYTES = 16 << 20  # the LM head's weight read per part: a fraction of a decoding step's time
# model families whose logits are exactly their LM head's linear map of the decoder's last hidden state (no scaling,
# no soft-capping): the ones whose head runs in parts
PLAIN_HEADS = frozenset({"llama", "phi3"})
ID_WRITTEN = re.compile(r"#[0-9]{1,9}")  # ASCII digits only
METHODS = ("both", "grad_x_input", "integrated_gradients")
_ALIASES = {"gradient": "grad_x_input", "gradient x input": "grad_x_input", "ig": "integrated_gradients"}


class Target(TypedDict):
    index: int  # its position in the token sequence: right after the tokens attributed
    id: int
    piece: str
    text: str
    logprob: float  # the model's, after the tokens attributed
    prob: float
    rank: int  # 1 = the model's most likely token there


class Attribution(TypedDict):
    """The answer of /attribution."""

    tokens: list[TokenRef]  # the tokens attributed, in order
    target: Target
    method: str
    grad_x_input: list[float] | None  # per token, in log-probability units (None when `method` leaves it out)
    integrated_gradients: list[float] | None
    steps: int | None  # integrated gradients' steps
    completeness_error: float | None  # |Σ IG − (logprob_input − logprob_baseline)|
    logprob_input: float  # log p(target) after the tokens
    logprob_baseline: float | None  # log p(target) after the baseline's rows
    baseline: str | None  # what integrated gradients started from, in words
    prompt_tokens: int
    note: str


# -- on the model's side ---------------------------------------------------------------------------------------
class DenseWeights:
    """Dense copies of packed linear layers' weights for their backward passes, up to `budget` bytes; past it a
    layer's weight is unpacked at each use. Unpacking is slow per call (oneDNN reorders many small layers one by
    one) and fast per byte, so the copies are kept: one set per loaded model (`for_model`), made as the first
    attribution's backward passes reach each layer and reused by every later one."""

    def __init__(self, budget: int = DENSE_BYTES, model: nn.Module | None = None) -> None:
        self.kept: dict[nn.Module, torch.Tensor] = {}
        self.left = budget
        if model is not None:  # a tied output layer's dense weight is the input embedding's: nothing to unpack
            head, embed = model.get_output_embeddings(), model.get_input_embeddings()
            tied = getattr(model.config, "tie_word_embeddings", False) and embed is not None
            if tied and isinstance(head, PackedLinear) and \
                    (head.out_features, head.in_features) == tuple(embed.weight.shape):
                self.kept[head] = embed.weight

    @classmethod
    def for_model(cls, loaded: LoadedModel) -> DenseWeights:
        """The loaded model's set, made at its first use (only the engine's worker runs attributions)."""
        if loaded.gradient_weights is None:
            loaded.gradient_weights = cls(model=loaded.model)
        return loaded.gradient_weights

    def __call__(self, layer: PackedLinear) -> torch.Tensor:
        weight = self.kept.get(layer)
        if weight is None:
            weight = layer.weight
            size = weight.numel() * weight.element_size()
            if size <= self.left:
                self.kept[layer], self.left = weight, self.left - size
        return weight


class _ThroughPacked(torch.autograd.Function):
    """A packed linear layer's output as computed, with the gradient x @ Wᵀ has for x: grad @ W (W dense)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out: torch.Tensor, layer: PackedLinear, dense: DenseWeights) -> torch.Tensor:
        ctx.layer, ctx.dense = layer, dense
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return grad @ ctx.dense(ctx.layer).to(grad.dtype), None, None, None


@contextlib.contextmanager
def _packed_gradients(model: nn.Module, dense: DenseWeights) -> Iterator[None]:
    """Inside the block, this thread's passes through the model's packed linear layers carry gradients to their
    inputs (the hook sees every thread's calls: it keeps its own). The hook goes first, so that other forward hooks
    (core/inside/stepping.py's) see the output gradients reach."""
    me = threading.get_ident()

    def bridge(layer: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        if threading.get_ident() != me or not args[0].requires_grad:
            return None
        return _ThroughPacked.apply(args[0], out.detach(), layer, dense)

    hooks = [m.register_forward_hook(bridge, prepend=True) for m in model.modules() if isinstance(m, PackedLinear)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


class _HeadInParts(torch.autograd.Function):
    """logits = W h for one hidden state h [hidden] and an LM head's dense weight W [vocab, hidden], a block of
    HEAD_PART_BYTES of W at a time with a pause point between blocks, forward and backward: the vocabulary-wide
    matmul is otherwise the longest single op of a pass in either direction."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        out = hidden.new_empty(weight.shape[0])
        for rows in _head_parts(weight):
            pause_point()
            out[rows] = weight[rows] @ hidden
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (weight,) = ctx.saved_tensors
        total = None
        for rows in _head_parts(weight):
            pause_point()
            part = grad[rows] @ weight[rows]
            total = part if total is None else total + part
        return total, None


def _head_parts(weight: torch.Tensor) -> list[slice]:
    step = max(1, HEAD_PART_BYTES // (weight.shape[1] * weight.element_size()))
    return [slice(start, start + step) for start in range(0, weight.shape[0], step)]


def _last_logits(model: nn.Module, x: torch.Tensor, dense: DenseWeights) -> torch.Tensor:
    """The logits [vocab] after input rows x [1, tokens, hidden]. Where the model's logits are its LM head's linear
    map of the decoder's last hidden state (the families in PLAIN_HEADS), the head runs in parts (`_HeadInParts`);
    any other model runs its own forward whole."""
    head = model.get_output_embeddings()
    plain = getattr(model.config, "model_type", "") in PLAIN_HEADS and getattr(head, "bias", None) is None
    if not plain or not isinstance(head, (nn.Linear, PackedLinear)):
        return model(inputs_embeds=x, use_cache=False, logits_to_keep=1).logits[0, -1]
    hidden = model.get_decoder()(inputs_embeds=x, use_cache=False).last_hidden_state[0, -1]
    weight = dense(head) if isinstance(head, PackedLinear) else head.weight
    return _HeadInParts.apply(hidden, weight.detach().to(hidden.dtype))


def _gradients(model: nn.Module, rows: torch.Tensor, target: int | None,
               dense: DenseWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 log-probabilities [vocab] after input embedding rows [tokens, hidden], and the gradient of
    log p(target) (None: the most likely token) with respect to the rows."""
    with torch.inference_mode(False), torch.enable_grad(), _packed_gradients(model, dense):
        pause_point()  # the pass's set-up, and its start before the first sublayer, are stretches of their own
        x = rows.clone().unsqueeze(0).requires_grad_()  # a normal tensor, even from an inference one
        logits = _last_logits(model, x, dense)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        chosen = int(logprobs.argmax()) if target is None else target
        [grad] = torch.autograd.grad(logprobs[chosen], [x])
        pause_point()  # and so are the backward's end and the pass's tear-down
        return logprobs.detach(), grad[0]


def _next_alpha(points: dict[float, tuple[float, torch.Tensor]]) -> float:
    """The middle of the interval between two points of the path whose trapezoid misses the change in log p(target)
    across it by the most; `points` maps α to (log p(target), each token's ⟨∇, e − b⟩) there."""
    def miss(a: float, b: float) -> float:
        (fa, ga), (fb, gb) = points[a], points[b]
        return abs(fb - fa - (b - a) * float(ga.sum() + gb.sum()) / 2)

    a, b = max(itertools.pairwise(sorted(points)), key=lambda ab: miss(*ab))
    return (a + b) / 2


def _compute(loaded: LoadedModel, ids: list[int], target: int | None, method: str, steps: int,
             base_ids: list[int]) -> Generator[Step, None, dict[str, Any]]:
    """On the model's side: the target's log-probability after `ids` and each token's scores, as plain numbers;
    `base_ids` are the baseline's tokens."""
    model = loaded.model
    require_weights(model)
    embed = model.get_input_embeddings()
    with torch.inference_mode(False):
        rows = embed(torch.tensor(ids, device=model.device)).detach()
        baseline = embed(torch.tensor(base_ids, device=model.device)).detach()
    integrated = method != "grad_x_input"
    dense = DenseWeights.for_model(loaded)
    total = 1 + (steps + 1 if integrated else 0)
    logprobs, grad = _gradients(model, rows, target, dense)  # integrated gradients use the gradient too: the path's end
    target = int(logprobs.argmax()) if target is None else target
    result: dict[str, Any] = {
        "target": target, "logprob": float(logprobs[target]), "rank": int((logprobs > logprobs[target]).sum()) + 1,
        "grad_x_input": None if method == "integrated_gradients" else (grad.float() * rows.float()).sum(-1).tolist(),
        "integrated_gradients": None, "logprob_baseline": None}
    yield 1, total, "gradient × input"
    if not integrated:
        return result
    diff = (rows - baseline).float()
    points = {1.0: (result["logprob"], (grad.float() * diff).sum(-1))}  # α: (log p(target), each token's ⟨∇, e − b⟩)
    logprobs, grad = _gradients(model, baseline, target, dense)
    points[0.0] = (float(logprobs[target]), (grad.float() * diff).sum(-1))
    result["logprob_baseline"] = points[0.0][0]
    yield 2, total, "integrated gradients: the baseline"
    even = steps // 2 + 1  # the even part's intervals
    for k in range(steps):
        alpha = (k + 1) / even if k + 1 < even else _next_alpha(points)
        logprobs, grad = _gradients(model, baseline + alpha * (rows - baseline), target, dense)
        points[alpha] = (float(logprobs[target]), (grad.float() * diff).sum(-1))
        yield k + 3, total, f"integrated gradients: step {k + 1} of {steps}"
    scores = sum((b - a) / 2 * (points[a][1] + points[b][1]) for a, b in itertools.pairwise(sorted(points)))
    result["integrated_gradients"] = scores.tolist()
    return result


# -- in the caller's thread ------------------------------------------------------------------------------------
def baseline_id(tokenizer: Any) -> int:
    """The token the baseline puts in place of ordinary tokens: the word " the" after another word (`Ġthe`,
    `▁the`); the padding token (or the end-of-text one) in a vocabulary without it."""
    *_, the = tokenizer.encode("the the", add_special_tokens=False)
    if tokenizer.decode([the]).strip() == "the":
        return int(the)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise UnavailableError("This tokenizer has neither the word 'the', nor a padding or end-of-text token, to "
                               "build the integrated-gradients baseline from.")
    return int(pad)


def baseline_ids(tokenizer: Any, ids: list[int], word: int) -> list[int]:
    """Integrated gradients' baseline for `ids`: the first token and the special tokens as they are, `word` (the
    caller's `baseline_id`) in place of every other token."""
    keep = special_ids(tokenizer)
    return [t if i == 0 or t in keep else word for i, t in enumerate(ids)]


def _in_steps(loaded: LoadedModel, *args: Any) -> Generator[Step, None, dict[str, Any]]:
    """`_compute`'s passes in short stretches, forward and backward (core/inside/stepping.py): a chat waits for one
    stretch at most."""
    return (yield from stepped(loaded.model, _compute(loaded, *args)))


def target_id(loaded: LoadedModel, target: Any) -> int | None:
    """None (the most likely next token), a token id (or `#1234`, as the Embeddings tab writes ids), or a string that
    is one token: its piece as the vocabulary writes it (`ĠParis`, `▁Paris`) or a text that encodes to exactly one
    token (` Paris`)."""
    if target is None:
        return None
    strings = token_strings(loaded.tokenizer)
    if isinstance(target, str) and ID_WRITTEN.fullmatch(target.strip()):
        target = int(target.strip()[1:])
    if isinstance(target, int) and not isinstance(target, bool):
        if not strings.is_token(target):
            raise InvalidInputError(f"Token id {target} is not in the vocabulary (ids 0 to {strings.size - 1:,}).")
        return target
    target = checks.text(target, "The target", 100, required=True,
                         what="The target is empty: type one token, or leave it out for the most likely one.")
    piece = loaded.tokenizer.convert_tokens_to_ids(target)
    unk = getattr(loaded.tokenizer, "unk_token_id", None)
    if isinstance(piece, int) and strings.is_token(piece) and (piece != unk or target == loaded.tokenizer.unk_token):
        return piece
    ids = loaded.tokenizer.encode(target, add_special_tokens=False)
    if len(ids) == 1:
        return int(ids[0])
    pieces = ", ".join(strings.piece(i) for i in ids[:8]) + (", ..." if len(ids) > 8 else "")
    raise InvalidInputError(f"The target {checks.quote(target)} is {len(ids)} tokens ({pieces}), not one. Type a "
                            "single token (a piece from the Tokens tab, or its id).")


def _attribute(engine: Engine, ids: list[int], target: int | None, method: Any, steps: Any,
               progress: Progress | None) -> Attribution:
    """The one path every attribution takes: `target` after `ids`, scored over `ids`."""
    loaded = engine.loaded
    method = checks.choice(method, "method", METHODS, _ALIASES)
    steps = checks.integer(steps, "steps", 1, MAX_STEPS)
    if len(ids) > MAX_ATTRIBUTION_TOKENS:
        raise InvalidInputError(f"Attribution reads at most {MAX_ATTRIBUTION_TOKENS} tokens before the target; there "
                                f"are {len(ids):,}. Shorten the text.")
    word = baseline_id(loaded.tokenizer)
    base_ids = baseline_ids(loaded.tokenizer, ids, word)
    raw = engine.inspect(_in_steps, ids, target, method, steps, base_ids, progress=progress)
    strings = token_strings(loaded.tokenizer)
    tid = raw["target"]
    integrated = raw["integrated_gradients"]
    error = None if integrated is None else abs(sum(integrated) - (raw["logprob"] - raw["logprob_baseline"]))
    baseline = (f"the text with {strings.piece(word)!r} in place of every ordinary token, its first token and "
                "special tokens kept")
    note = ""
    if integrated is not None:
        kept = ["the first token"]
        specials = sum(base_ids[i] == ids[i] != word for i in range(1, len(ids)))
        words = ids[1:].count(word)
        if specials:
            kept.append(f"{specials} special token{'s' if specials > 1 else ''}")
        if words:
            kept.append(f"{words} × {strings.piece(word)!r}")
        kept_text = kept[0] if len(kept) == 1 else ", ".join(kept[:-1]) + " and " + kept[-1]
        note = (f"Integrated gradients over {steps} steps from the baseline: {baseline}. Scores 0 where the baseline "
                f"keeps the token: {kept_text}. Their sum misses the change in log-probability by {error:.2g}"
                + (f" ({error / max(abs(raw['logprob'] - raw['logprob_baseline']), 1e-9):.0%} of it): more steps "
                   "bring it closer." if error > COMPLETE_ENOUGH else "."))
    dtype = next(loaded.model.parameters()).dtype
    if dtype != torch.float32:
        note += f" Computed in {str(dtype).removeprefix('torch.')}, the model's precision: gradients are rough."
    return Attribution(
        tokens=[token_ref(strings, ids, i) for i in range(len(ids))],
        target=Target(index=len(ids), id=tid, piece=strings.piece(tid), text=strings.text(tid), logprob=raw["logprob"],
                      prob=math.exp(raw["logprob"]), rank=raw["rank"]),
        method=method, grad_x_input=raw["grad_x_input"], integrated_gradients=integrated,
        steps=None if integrated is None else steps, completeness_error=error, logprob_input=raw["logprob"],
        logprob_baseline=raw["logprob_baseline"], baseline=baseline if integrated is not None else None,
        prompt_tokens=len(ids), note=note.strip())


def attribution_of_ids(engine: Engine, ids: Any, position: Any, method: Any = "both", steps: Any = DEFAULT_STEPS,
                       progress: Progress | None = None) -> Attribution:
    """The token at `position` of the sequence `ids` (a chat's prompt and answer so far), attributed over every token
    before it."""
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InvalidInputError("The token ids must be a list of whole numbers.")
    ids = [int(i) for i in ids]
    if len(ids) < 2:
        raise InvalidInputError("Attribution needs a target token and at least one token before it.")
    position = checks.integer(position, "position", 1, len(ids) - 1)
    strings = token_strings(engine.loaded.tokenizer)
    bad = next((i for i in ids if not strings.is_token(i)), None)
    if bad is not None:
        raise InvalidInputError(f"Token id {bad} is not in the vocabulary (ids 0 to {strings.size - 1:,}).")
    return _attribute(engine, ids[:position], ids[position], method, steps, progress)


def attribution(engine: Engine, text: Any, target: Any = None, method: Any = "both", steps: Any = DEFAULT_STEPS,
                progress: Progress | None = None) -> Attribution:
    """The tokens of `text` scored by how much each raises the log-probability of `target` (None: the model's most
    likely next token; a token id; or a string that is one token) as the next token."""
    ids = text_ids(engine.loaded, text)
    return _attribute(engine, ids, target_id(engine.loaded, target), method, steps, progress)
