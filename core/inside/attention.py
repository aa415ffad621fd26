"""Attention maps: how much each token's query weighs every earlier token, in every layer and head, and which heads
mostly look at the first token, the previous token or the token itself.

The weights are the model's own: softmax(QKᵀ/√d + causal mask) exactly as transformers' eager attention computes them
(what `output_attentions=True` returns), one map per query head, the grouped key/value heads repeated as the model
repeats them. The chat runs SDPA, which never forms the weights, so during each forward call of this view (in its
own thread only: `eager_attention`) the model's configs say "eager", and forward hooks on the modules transformers
itself records as `attentions` (the model class's `_can_record_outputs`) keep their weights. The passes run in a
thread of their own that stops every few milliseconds (core/inside/stepping.py), so a chat waits that long at most.
The lean step (core/engine/lean_step.py) computes no weights either, so this view runs the transformers forward.

Attention is causal: what the first n tokens do among themselves does not depend on what follows, so the view covers
the first `max_tokens` tokens of the text and every row of a map sums to 1. Each map is lower-triangular; only row q's
q + 1 causal entries are sent.

    r = attention(engine, "The capital of France is", layer=0)
    sent(r)["maps"][0][0][2]        # layer 0, head 0, query 2 (" of"): its weights on "The", " capital", " of"
    # [0.5898, 0.3821, 0.0281]
    r["summary"][2][1]["role"]      # "first token", "previous token", "same token" or ""
    # 'previous token'
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Generator, Iterator, Sequence
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache, PretrainedConfig
from transformers.utils.output_capturing import OutputRecorder

from core import checks
from core.engine.base import Engine
from core.errors import InvalidInputError, UnavailableError
from core.inside.anatomy import anatomy
from core.inside.contextual import TokenRef, token_ref
from core.inside.forward import Step
from core.inside.next_tokens import read_ids
from core.inside.stepping import stepped
from core.model.loading import LoadedModel
from core.text.token_strings import token_strings
from core.work.progress import Progress

MAX_ATTENTION_TOKENS = 256
# The default tokens covered: on the CPU an eager pass over 64 tokens costs about what a plain one does and every
# layer's maps are a few hundred thousand weights; a GPU affords twice the text.
CPU_TOKENS, GPU_TOKENS = 64, 128
MAX_SENT_WEIGHTS = 1_000_000  # weights in one answer's maps (about 8 MB of JSON): every layer's maps cover fewer tokens
CHUNK_TOKENS = 32  # queries per forward call, each continuing from the keys and values of the ones before
DECIMALS = 4
# A head's role is the one of its three shares (first, previous, same token) that holds the majority of its attention,
# a mean share of at least ROLE_SHARE over the queries that have an earlier token; "" when none does. At query 1 the
# first token is also the previous one, so in a two-token text both shares are equal and "first token" wins the tie.
ROLE_SHARE = 0.5
ROLES = ("first token", "previous token", "same token")
READING = "reading the text with attention weights"


class HeadSummary(TypedDict):
    layer: int
    head: int
    kv_head: int  # the key/value head it reads (grouped-query attention): heads sharing one see the same keys
    first: float | None  # mean weight, over queries 1.., on the first token (None for a one-token text)
    previous: float | None  # ... on the token just before the query
    same: float | None  # ... on the query's own token
    role: str  # the ROLES entry holding at least ROLE_SHARE of the attention, or ""


class _AttentionFields(TypedDict):
    tokens: list[TokenRef]  # the tokens covered, in order (keys and queries alike)
    layers: int
    heads: int  # query heads: one map each
    kv_heads: int  # key/value heads (fewer than `heads` under grouped-query attention)
    layer: int | None  # the one layer whose maps are computed, or None for all
    summary: list[list[HeadSummary]]  # summary[layer][head], every layer's whatever `layer` is
    prompt_tokens: int  # tokens in the text (or the chat prompt); `tokens` covers the first of them
    prompt: str  # the text the model read (the rendered chat prompt with `chat`)
    note: str


class Attention(_AttentionFields):
    """What `attention` computes: each layer's maps as one array, for the page to draw."""

    maps: list[np.ndarray | None]  # maps[layer]: float32 [heads, queries, keys], zeros above the diagonal; None: not
    # computed


class SentAttention(_AttentionFields):
    """The answer of /attention (`sent`): each map as its causal rows."""

    maps: list[list[list[list[float]]] | None]  # maps[layer][head][query][key], key <= query; None: layer not sent


def default_tokens(device: str) -> int:
    return CPU_TOKENS if str(device).startswith("cpu") else GPU_TOKENS


# -- on the model's side ---------------------------------------------------------------------------------------
def attention_modules(model: nn.Module) -> list[tuple[nn.Module, int]]:
    """(module, where its output holds the weights) for each decoder layer, in order: the modules transformers itself
    hooks for `output_attentions`, as the model class declares them in `_can_record_outputs["attentions"]`."""
    spec = (getattr(model, "_can_record_outputs", None) or {}).get("attentions")
    if spec is None:
        raise UnavailableError(f"{type(model).__name__} does not say which of its modules compute attention, so its "
                               "attention weights cannot be read.")
    recorders = []
    for one in spec if isinstance(spec, list) else [spec]:
        if not isinstance(one, OutputRecorder):  # transformers' shorthand: a class, or a module-name suffix
            one = OutputRecorder(target_class=None if isinstance(one, str) else one, index=1,
                                 class_name=one if isinstance(one, str) else None)
        recorders.append(one)
    layers = anatomy(model).layers
    layer_of = {id(m): i for i, layer in enumerate(layers) for m in layer.modules()}
    found: dict[int, tuple[nn.Module, int]] = {}
    for name, module in model.named_modules():
        dotted = f".{name}."
        for rec in recorders:
            matches = ((rec.target_class is not None and isinstance(module, rec.target_class))
                       or (rec.class_name is not None and dotted[:-1].endswith(rec.class_name)))
            if matches and rec.layer_name is not None:
                matches = f".{rec.layer_name.strip('.')}." in dotted
            if matches and id(module) in layer_of:
                found.setdefault(layer_of[id(module)], (module, rec.index))
    if sorted(found) != list(range(len(layers))):
        raise UnavailableError(f"Cannot find one attention module in each of this model's {len(layers)} layers "
                               f"(found {len(found)}).")
    return [found[i] for i in range(len(layers))]


_HERE = threading.local()  # .eager: this thread's forward calls compute attention the eager way
_SWAP_LOCK = threading.Lock()
_SWAPPED: dict[int, list] = {}  # id(config): [config, its own class, threads inside eager_attention]
_KINDS: dict[type, type] = {}  # a config class: its subclass whose implementation depends on the thread


def _per_thread(cls: type) -> type:
    """`cls` with `_attn_implementation` "eager" in a thread inside `eager_attention`, its own value elsewhere.
    It keeps the name and module of `cls`, so that a config pickled meanwhile is pickled as a `cls`."""
    kind = _KINDS.get(cls)
    if kind is None:
        own = getattr(cls, "_attn_implementation", None)  # the property itself, read on the class
        if not isinstance(own, property):
            raise UnavailableError(f"{cls.__name__} does not keep its attention implementation where transformers' "
                                   "configs do, so it cannot be switched to eager attention for this view.")

        def get(config: PretrainedConfig) -> Any:
            return "eager" if getattr(_HERE, "eager", False) else own.fget(config)

        kind = _KINDS[cls] = type(cls.__name__, (cls,), {"_attn_implementation": property(get, own.fset),
                                                         "__module__": cls.__module__,
                                                         "__qualname__": cls.__qualname__})
    return kind


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """This thread's forward calls compute attention with transformers' eager implementation (the one that forms
    the weights) inside the block; every other thread's keep the model's own (SDPA), even meanwhile.

    The model's configs are shared: each is given, for the block, a subclass whose `_attn_implementation` reads
    "eager" in this thread alone (a thread that decodes a chat meanwhile, as the ZeroGPU engine's helpers do, must
    neither compute differently nor build its mask for one implementation and attend with another), which is also
    what lets a view's forward call stop between layers while the worker decodes chats."""
    configs = {id(c): c for m in model.modules() if isinstance(c := getattr(m, "config", None), PretrainedConfig)}
    with _SWAP_LOCK:
        for key, config in configs.items():
            if key in _SWAPPED:
                _SWAPPED[key][2] += 1
            else:
                _SWAPPED[key] = [config, type(config), 1]
                config.__class__ = _per_thread(type(config))
    was, _HERE.eager = getattr(_HERE, "eager", False), True
    try:
        yield
    finally:
        _HERE.eager = was
        with _SWAP_LOCK:
            for key in configs:
                entry = _SWAPPED[key]
                entry[2] -= 1
                if not entry[2]:
                    entry[0].__class__ = entry[1]
                    del _SWAPPED[key]


@contextlib.contextmanager
def captured_weights(modules: list[tuple[nn.Module, int]]) -> Iterator[list[torch.Tensor]]:
    """The attention weights [rows, heads, queries, keys] each module returns, in call order, from this thread's
    calls only (a hook belongs to the module and would see another thread's forward pass too)."""
    me = threading.get_ident()
    into: list[torch.Tensor] = []

    def keep(index: int) -> Any:
        def hook(_module: nn.Module, _args: Any, out: Any) -> None:
            if threading.get_ident() == me:
                into.append(out[index] if isinstance(out, tuple) else None)
        return hook

    hooks = [module.register_forward_hook(keep(index)) for module, index in modules]
    try:
        yield into
    finally:
        for hook in hooks:
            hook.remove()


def _marks(rows: torch.Tensor, start: int) -> torch.Tensor:
    """For rows [..., queries, keys] of queries start, start + 1, ...: each query's weight on the first token, on
    the previous one (0 for query 0, which has none) and on itself, [..., queries, 3]."""
    queries = torch.arange(start, start + rows.shape[-2], device=rows.device)
    same = rows.gather(-1, queries.view(-1, 1).expand(*rows.shape[:-1], 1))[..., 0]
    previous = rows.gather(-1, (queries - 1).clamp(min=0).view(-1, 1).expand(*rows.shape[:-1], 1))[..., 0]
    previous = torch.where(queries > 0, previous, torch.zeros_like(previous))
    return torch.stack([rows[..., 0], previous, same], dim=-1)


def _mean_shares(marks: torch.Tensor) -> torch.Tensor:
    """The mean of each mark over queries 1.. (the ones with an earlier token), [..., 3]; NaN with one token."""
    return marks[..., 1:, :].double().mean(dim=-2)


def shares(weights: torch.Tensor) -> torch.Tensor:
    """Mean share of attention on the first, previous and same token, over queries 1.., from full maps
    [..., queries, keys]: what `summary` reports.

        >>> w = torch.tensor([[1.0, 0.0, 0.0], [0.75, 0.25, 0.0], [0.5, 0.25, 0.25]])
        >>> shares(w).tolist()   # first: (0.75 + 0.5) / 2; previous: (0.75 + 0.25) / 2; same: (0.25 + 0.25) / 2
        [0.625, 0.5, 0.25]
    """
    return _mean_shares(_marks(weights, 0))


def role(first: float, previous: float, same: float) -> str:
    """The name of the largest share when it is at least ROLE_SHARE (ties go to the earlier of ROLES), else "".

        >>> role(0.625, 0.5, 0.25), role(0.3, 0.6, 0.1), role(0.4, 0.3, 0.3)
        ('first token', 'previous token', '')
    """
    best = max(range(3), key=lambda i: ((first, previous, same)[i], -i))
    return ROLES[best] if (first, previous, same)[best] >= ROLE_SHARE else ""


def attention_weights(model: nn.Module, ids: list[int], keep: Sequence[int] | None = None,
                      chunk: int = CHUNK_TOKENS) -> Generator[Step, None, tuple[torch.Tensor, torch.Tensor]]:
    """The attention weights of the `keep` layers (None: all), float32 [kept layers, heads, tokens, tokens] with
    zeros above the diagonal, and every layer's per-query marks (`_marks`) [layers, heads, tokens, 3].

    The text goes through `chunk` queries at a time, each call continuing from the keys and values of the ones before
    (the same attention rows: a query's weights on the earlier tokens are computed alike), with a pause after each."""
    modules = attention_modules(model)
    decoder = model.get_decoder()  # the layers alone: no LM head, which attention does not need
    count = len(modules)
    keep = list(range(count)) if keep is None else list(keep)
    batch = torch.tensor([ids], dtype=torch.long, device=model.device)
    width = len(ids)
    cache = DynamicCache() if width > chunk else None
    weights: torch.Tensor | None = None
    marks: list[torch.Tensor] = []
    for start in range(0, width, chunk):
        with eager_attention(model), captured_weights(modules) as got:
            decoder(input_ids=batch[:, start:start + chunk], past_key_values=cache, use_cache=cache is not None)
        stop = min(start + chunk, width)
        if len(got) != count or any(w is None or w.shape[-2:] != (stop - start, stop) for w in got):
            raise UnavailableError("The model's attention modules did not return their weights as transformers' "
                                   "eager attention does.")
        rows = torch.stack([w[0] for w in got]).float()  # [layers, heads, chunk queries, keys so far]
        if weights is None:
            weights = rows.new_zeros(len(keep), rows.shape[1], width, width)
        weights[:, :, start:stop, :stop] = rows[keep]
        marks.append(_marks(rows, start))
        yield start // chunk + 1, -(-width // chunk), READING
    return weights, torch.cat(marks, dim=-2)


def _compute(loaded: LoadedModel, ids: list[int], keep: list[int]) -> Generator[Step, None, dict[str, Any]]:
    """On the model's side: the kept layers' maps and every head's shares, as plain arrays."""
    weights, marks = yield from stepped(loaded.model, attention_weights(loaded.model, ids, keep))
    return {"weights": weights.cpu().numpy(), "shares": _mean_shares(marks).cpu().numpy()}


# -- in the caller's thread ------------------------------------------------------------------------------------
def sent(result: Attention) -> SentAttention:
    """`result` as /attention sends it: each map's causal rows (`causal_rows`)."""
    return SentAttention(**{**result, "maps": [None if m is None else causal_rows(m) for m in result["maps"]]})


def causal_rows(weights: np.ndarray) -> list[list[list[list[float]]]]:
    """Maps [..., tokens, tokens] as nested lists of their causal rows, rounded to DECIMALS: row q keeps keys 0..q.
    The lower triangle is gathered and rounded in one array operation, and only its values become Python floats.

        >>> causal_rows(np.array([[[1.0, 0.0], [0.123456, 0.876544]]]))
        [[[1.0], [0.1235, 0.8765]]]
    """
    tokens = weights.shape[-1]
    rows, keys = np.tril_indices(tokens)
    flat = np.round(weights[..., rows, keys].astype(np.float64), DECIMALS).tolist()  # [..., tokens·(tokens+1)/2]
    starts = [q * (q + 1) // 2 for q in range(tokens + 1)]

    def split(values: list) -> list:
        if values and isinstance(values[0], list):
            return [split(v) for v in values]
        return [values[a:b] for a, b in itertools.pairwise(starts)]

    return split(flat)


def _sent_weights(maps: int, tokens: int) -> int:
    return maps * tokens * (tokens + 1) // 2


def fits_all_layers(maps: int, tokens: int) -> bool:
    """Whether `maps` maps (every layer's heads) over `tokens` tokens are few enough weights to send at once.

        >>> fits_all_layers(30 * 9, 64), fits_all_layers(30 * 9, 128)
        (True, False)
    """
    return _sent_weights(maps, tokens) <= MAX_SENT_WEIGHTS


def attention(engine: Engine, text: Any, max_tokens: Any = None, layer: Any = None, chat: Any = False,
              progress: Progress | None = None) -> Attention:
    """Every head's attention over the first `max_tokens` tokens of `text` (None: the default for where the model
    runs), the maps of one `layer` or of all (None), and every head's summary."""
    loaded = engine.loaded
    chat = checks.flag(chat, "chat")
    config = loaded.model.config.get_text_config()
    layers, heads = int(config.num_hidden_layers), int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    if layer is not None:
        layer = checks.integer(layer, "layer", 0, layers - 1)
    asked = max_tokens is not None
    max_tokens = checks.integer(max_tokens, "max_tokens", 1, MAX_ATTENTION_TOKENS) if asked else \
        default_tokens(loaded.device)
    ids, read = read_ids(engine, text, chat)
    shown = min(max_tokens, len(ids))
    maps_sent = heads * (layers if layer is None else 1)
    if not fits_all_layers(maps_sent, shown):
        fit = max(n for n in range(1, shown + 1) if fits_all_layers(maps_sent, n))
        if asked:
            which = f"All {layers} layers' maps" if layer is None else f"Layer {layer}'s {heads} maps"
            raise InvalidInputError(f"{which} over {shown} tokens would be {_sent_weights(maps_sent, shown):,} "
                                    f"weights; the limit is {MAX_SENT_WEIGHTS:,}. "
                                    + ("Pick one layer, or at most " if layer is None else "Cover at most ")
                                    + f"{fit} tokens.")
        shown = fit
    covered = ids[:shown]
    keep = list(range(layers)) if layer is None else [layer]
    raw = engine.inspect(_compute, covered, keep, progress=progress)
    maps: list[np.ndarray | None] = [None] * layers
    for slot, index in enumerate(keep):
        maps[index] = raw["weights"][slot]
    group = max(1, heads // kv_heads)
    summary = [[HeadSummary(layer=i, head=h, kv_head=h // group, first=None, previous=None, same=None, role="")
                for h in range(heads)] for i in range(layers)]
    if shown > 1:
        for i in range(layers):
            for h in range(heads):
                first, previous, same = (round(float(x), DECIMALS) for x in raw["shares"][i][h])
                summary[i][h].update(first=first, previous=previous, same=same, role=role(first, previous, same))
    strings = token_strings(loaded.tokenizer)
    note = f"Covering the first {shown} of {len(ids)} tokens: later tokens do not change their attention." \
        if shown < len(ids) else ""
    return Attention(tokens=[token_ref(strings, covered, i) for i in range(shown)], layers=layers, heads=heads,
                     kv_heads=kv_heads, layer=layer, maps=maps, summary=summary, prompt_tokens=len(ids),
                     prompt=read, note=note)
