"""`make gpu-check`: Token Lab's headline on a CUDA GPU, in one run of a few minutes, with core/ alone (no gradio).

It builds a Phi-3-mini-shaped Phi3ForCausalLM with random bfloat16 weights (Phi-3's config: 32 layers, hidden 3072,
vocab 32064) and the real Phi-3 tokenizer (from ../shared/fixtures, or a tokenizer folder given with --tokenizer; a
stand-in, labelled as such, otherwise), runs the GPU-marked tests, and measures side by side: the chat engine's
batch-1 decode speed against plain `model.generate`; 8 simultaneous chats against one; a neighbours query on the
embedding matrix through the app's FAISS GPU index against torch matmul + topk on the same GPU; the engine's peak GPU
memory. Random weights decode as fast as trained ones; the stop tokens' output rows are zeroed so that every answer
runs to its full length and both sides decode the same number of tokens. Without FAISS (the lent GPU machine has
none unless a build travels with the tree) the neighbours row times torch alone and says so.

    python -m bench.gpu_check                      # on a CUDA machine: writes bench/results/gpu.md|json
    python -m bench.gpu_check --device cpu --layers 2 --hidden 64 --tokens 8 --reps 1 --batch 32 --no-tests

The second line is the dry run `make test` runs (tests/test_gpu_check.py). Without CUDA (and without --device cpu)
the check prints one line and exits 0. A part that fails (decoding, neighbours) is reported in the results and the
rest still measured; the exit status is then 1, as it is when a GPU test fails.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from bench.results_io import RESULTS, write_results
from core.config import RequestLimits
from core.engine.local import ChatEngine
from core.engine.settings import GenerationSettings
from core.model.loading import LoadedModel, resolve_dtype
from core.model.packed_linear import pack_linear_layers
from tests import phi3
from tests.streams import finished

try:
    from core.embeddings.index import VocabIndex
    from core.embeddings.search import gpu_available as faiss_gpu_available
    FAISS_MISSING = ""
except ModuleNotFoundError as exc:
    if exc.name != "faiss":
        raise
    VocabIndex = faiss_gpu_available = None
    FAISS_MISSING = "FAISS is not installed here"

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Write a long story about a dragon who learns to read."
STOP_IDS = (32000, 32001, 32007)  # Phi-3's generation_config eos ids
K = 10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu, for a dry run of the same code")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=3072, help="a dry run may take a smaller model (e.g. 64)")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per answer")
    parser.add_argument("--chats", type=int, default=8, help="simultaneous chats (at most the engine's queue, 16)")
    parser.add_argument("--reps", type=int, default=3, help="measurements per figure (the median is reported)")
    parser.add_argument("--batch", type=int, default=1024, help="queries in the batched neighbours search")
    parser.add_argument("--tokenizer", type=Path, help="a Phi-3 tokenizer folder (default: ../shared/fixtures)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-tests", action="store_true", help="skip `pytest -m gpu`")
    return parser.parse_args(argv)


# -- the model and tokenizer ------------------------------------------------------------------------------------------


def stand_in_tokenizer():
    """32,011 tokens with Phi-3's specials, ids and chat template, but made-up pieces: enough to time decoding and
    search where the real SentencePiece model is absent."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [f"▁w{i}" for i in range(32000 - len(pieces))] + phi3.PHI3_SPECIALS
    backend = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in phi3.PHI3_SPECIALS])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>", chat_template=phi3.PHI3_CHAT_TEMPLATE,
                                   model_max_length=4096)


def phi3_tokenizer(folder: Path | None, work: Path):
    """(tokenizer, what it is): the folder given, else the real one built from ../shared/fixtures, else a stand-in."""
    from transformers import AutoTokenizer

    if folder is not None:
        return AutoTokenizer.from_pretrained(folder), f"Phi-3 tokenizer from {folder}"
    if phi3.fixture_available():
        return AutoTokenizer.from_pretrained(phi3.build_phi3_tokenizer(work / "phi3-tokenizer")), \
            "real Phi-3 tokenizer (../shared/fixtures)"
    return stand_in_tokenizer(), "STAND-IN tokenizer (no ../shared/fixtures): Phi-3's ids and specials, made-up pieces"


def phi3_shaped_model(layers: int, hidden: int, device: str, dtype: torch.dtype):
    """Phi-3-mini's architecture with random weights, built directly on `device`."""
    from transformers import AutoModelForCausalLM, GenerationConfig, Phi3Config

    heads = 32 if hidden % 32 == 0 and hidden >= 1024 else 4
    config = Phi3Config(vocab_size=32064, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                        max_position_embeddings=4096, sliding_window=2047, rope_theta=10000.0, bos_token_id=1,
                        eos_token_id=32000, pad_token_id=32000, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        model.lm_head.weight[list(STOP_IDS)] = 0  # a zero logit never beats the best of 32,000 random ones
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=list(STOP_IDS), pad_token_id=32000)
    return model.eval()


# -- measurements ---------------------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _TokenClock:
    """A `generate` streamer that notes when each new token exists (the first call carries the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        value.cpu()  # waits for the token
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def plain_generate(model, ids: list[int], tokens: int) -> dict:
    """Batch-1 greedy `model.generate` on the prompt's ids: decode tokens/s after the first token, and TTFT."""
    input_ids = torch.tensor([ids], device=model.device)
    clock = _TokenClock()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=tokens,
                             do_sample=False, streamer=clock, pad_token_id=32000)
    new = out.shape[1] - input_ids.shape[1]
    first, last = clock.times[1], clock.times[-1]
    return {"tokens": new, "ttft_s": first - start, "decode_tok_s": (new - 1) / (last - first) if new > 1 else 0.0}


def engine_chats(engine: ChatEngine, n: int, tokens: int) -> dict:
    """`n` chats submitted at once; per chat: tokens, TTFT, decode tokens/s; together: tokens/s from the first
    submission to the last answer's end."""
    settings = GenerationSettings(temperature=0, max_new_tokens=tokens)
    streams = [engine.chat(f"{PROMPT} Chapter {i + 1}.", [], "", settings) for i in range(n)]
    for stream in streams:
        if not finished(stream, 600):
            raise RuntimeError("the engine did not finish within 10 minutes")
        if stream.error is not None:
            raise RuntimeError(f"the engine failed: {stream.error}") from stream.error
    stats = [s.stats for s in streams]
    wall = max(s.finished_at for s in streams) - min(s.created for s in streams)
    ttfts = sorted(s.ttft_s for s in stats)
    return {"chats": n, "tokens": [s.generated_tokens for s in stats],
            "aggregate_tok_s": sum(s.generated_tokens for s in stats) / wall, "ttft_s": ttfts,
            "ttft_p95_s": ttfts[min(n - 1, round(0.95 * (n - 1)))],
            "decode_tok_s": statistics.median(s.tokens_per_s or 0.0 for s in stats),
            "full_length": all(s.generated_tokens == tokens for s in stats)}


def timed(fn, reps: int, device: str) -> float:
    """Median seconds of `fn()` over `reps` calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def faiss_unusable(device: str) -> str:
    """Why the app's index cannot be measured here, or "" when it can."""
    if VocabIndex is None:
        return FAISS_MISSING
    if device.startswith("cuda") and not faiss_gpu_available():
        return "this FAISS build has no GPU support"
    return ""


def neighbour_search(model, tokenizer, device: str, batch: int, reps: int) -> dict:
    """The app's index (VocabIndex; the FAISS GPU flat index on CUDA) against torch matmul + topk on the same device
    and the same unit rows; both take numpy queries and return numpy results, as the app needs them. Where FAISS
    cannot run, torch's side is still timed."""
    weight = model.get_input_embeddings().weight.detach()[:len(tokenizer)].float()
    unit = torch.nn.functional.normalize(weight, dim=1)
    why_not = faiss_unusable(device)
    index, build_s = None, None
    if not why_not:
        start = time.perf_counter()
        index = VocabIndex.from_model(model, tokenizer, use_gpu=device.startswith("cuda"))
        build_s = time.perf_counter() - start
        unit = torch.from_numpy(np.array(index.unit_vectors)).to(device)
    rows, dim = unit.shape
    queries = np.random.default_rng(0).standard_normal((batch, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    def with_torch(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = torch.topk(torch.from_numpy(q).to(device) @ unit.T, K, dim=1)
        return scores.cpu().numpy(), ids.cpu().numpy()

    result = {"index": index.describe() if index else f"not measured: {why_not}", "rows": rows, "dim": dim,
              "build_s": build_s, "faiss": not why_not}
    for name, q, n in (("single", queries[:1], max(reps * 30, 20)), (f"batch_{batch}", queries, max(reps * 3, 3))):
        m = {"torch_s": timed(lambda q=q: with_torch(q), n, device)}
        if index is not None:
            pairs = zip(index.search(q, K)[1], with_torch(q)[1], strict=True)
            m["faiss_s"] = timed(lambda q=q: index.search(q, K), n, device)
            m["same_top10"] = float(np.mean([set(a) == set(b) for a, b in pairs]))
        result[name] = m
    return result


def gpu_tests(timeout: float) -> dict:
    """`pytest -m gpu` over the test files that hold GPU-marked tests (the others may import gradio)."""
    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("test_*.py")
                   if "pytest.mark.gpu" in p.read_text())
    if not files:
        return {"summary": "no GPU-marked tests", "returncode": 5}
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs", *files]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"summary": f"timed out after {timeout:.0f} s", "returncode": None, "files": files}
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return {"summary": lines[-1].strip("= ") if lines else proc.stderr.strip()[-300:], "returncode": proc.returncode,
            "files": files, "seconds": time.perf_counter() - start, "output": proc.stdout[-4000:]}


# -- report -----------------------------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def neighbour_rows(idx: dict) -> list[tuple[str, str]]:
    rows = []
    for name in [n for n in idx if n == "single" or n.startswith("batch_")]:
        m = idx[name]
        label = f"neighbours, {'1 query' if name == 'single' else name.split('_')[1] + ' queries'}, k={K}"
        shape = f"{idx['rows']:,} × {idx['dim']}"
        if "faiss_s" in m:
            rows.append((f"{label}: app's index ÷ torch matmul + topk ({shape})",
                         f"{m['faiss_s'] * 1e3:.2f} ms / {m['torch_s'] * 1e3:.2f} ms = "
                         f"**{m['faiss_s'] / m['torch_s']:.2f}** (same top 10: {m['same_top10']:.0%})"))
        else:
            rows.append((f"{label}: torch matmul + topk ({shape})",
                         f"{m['torch_s'] * 1e3:.2f} ms; the app's index {idx['index']}"))
    return rows


def table(r: dict) -> list[tuple[str, str]]:
    rows = [("device", r["device_name"]), ("torch", r["torch"]), ("model", r["model"]), ("tokenizer", r["tokenizer"]),
            ("GPU tests (pytest -m gpu)", r["gpu_tests"].get("summary", "skipped"))]
    d = r["decoding"]
    if "failed" in d:
        rows.append(("decoding: engine and model.generate", f"FAILED: {d['failed']}"))
    else:
        solo, many = d["lone"], d["together"]
        rows += [("tokens per answer", f"{r['tokens_per_answer']} (every answer ran to its full length: "
                                       f"{'yes' if d['full_length'] else 'NO'})"),
                 ("batch-1 decode tok/s: engine / model.generate",
                  f"{d['engine_batch1']:.1f} / {d['generate_batch1']:.1f} = **{d['engine_over_generate']:.2f}**"),
                 (f"{many['chats']} chats' aggregate tok/s ÷ one chat's",
                  f"{many['aggregate_tok_s']:.1f} / {solo['aggregate_tok_s']:.1f} = **{d['aggregate_ratio']:.2f}**"),
                 (f"p95 TTFT of {many['chats']} chats ÷ a lone chat's",
                  f"{many['ttft_p95_s'] * 1e3:.0f} ms / {solo['ttft_p95_s'] * 1e3:.0f} ms = "
                  f"**{d['ttft_ratio']:.2f}**")]
        if d["peak_gpu_bytes"] is not None:
            rows.append(("engine's peak GPU memory (weights)",
                         f"{d['peak_gpu_bytes'] / 2**30:.2f} GiB ({r['weight_bytes'] / 2**30:.2f} GiB)"))
    n = r["neighbours"]
    rows += [("neighbours", f"FAILED: {n['failed']}")] if "failed" in n else neighbour_rows(n)
    rows.append(("whole check", f"{r['seconds']:.0f} s"))
    return rows


def median_run(runs: list[dict], key: str) -> dict:
    return sorted(runs, key=lambda run: run[key])[len(runs) // 2]


def decoding(loaded: LoadedModel, args: argparse.Namespace) -> dict:
    """The engine against model.generate at batch 1, and `args.chats` chats against one, on one model."""
    model, on_gpu = loaded.model, loaded.device.startswith("cuda")
    engine = ChatEngine(loaded, RequestLimits())  # the app's defaults: 16 requests in progress, rows as memory allows
    try:
        ids = engine.prompt(PROMPT, [], "", args.tokens).ids  # the engine's own prompt: both sides decode the same
        plain_generate(model, ids, min(args.tokens, 8))  # warm-up
        engine_chats(engine, 1, min(args.tokens, 8))
        gen_runs = [plain_generate(model, ids, args.tokens) for _ in range(args.reps)]
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        lone = [engine_chats(engine, 1, args.tokens) for _ in range(args.reps)]
        together = [engine_chats(engine, args.chats, args.tokens) for _ in range(args.reps)]
        peak = torch.cuda.max_memory_allocated() if on_gpu else None
        engine_stats = engine.stats()
    finally:
        engine.close()
    solo, many = median_run(lone, "aggregate_tok_s"), median_run(together, "aggregate_tok_s")
    eng = statistics.median(run["decode_tok_s"] for run in lone)
    gen = statistics.median(run["decode_tok_s"] for run in gen_runs)
    return {"full_length": all(run["full_length"] for run in lone + together)
                           and all(run["tokens"] == args.tokens for run in gen_runs),
            "engine_batch1": eng, "generate_batch1": gen, "engine_over_generate": ratio(eng, gen),
            "lone": solo, "together": many, "aggregate_ratio": ratio(many["aggregate_tok_s"], solo["aggregate_tok_s"]),
            "ttft_ratio": ratio(many["ttft_p95_s"], solo["ttft_p95_s"]), "generate_runs": gen_runs,
            "engine": engine_stats, "peak_gpu_bytes": peak}


def guarded(name: str, fn, *args) -> dict:
    """`fn(*args)`, or {"failed": why} with the traceback printed: one broken part must not cost a GPU run the rest."""
    try:
        return fn(*args)
    except Exception as exc:
        traceback.print_exc()
        return {"failed": f"{name}: {type(exc).__name__}: {exc}".splitlines()[0]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA GPU here (torch {torch.__version__} sees none); nothing measured.")
        return 0
    begin = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.perf_counter() - begin - sum(phases.values()), 2)

    tests = {"summary": "skipped (--no-tests)"} if args.no_tests else gpu_tests(timeout=240)
    phase("pytest -m gpu")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        tokenizer, tokenizer_label = phi3_tokenizer(args.tokenizer, Path(work))
    dtype = resolve_dtype("auto", device)
    start = time.perf_counter()
    model = phi3_shaped_model(args.layers, args.hidden, device, dtype)
    pack_linear_layers(model)  # as load_model does: oneDNN-packed weights on the CPU, nothing on a GPU
    sync(device)
    phase("tokenizer and model")
    loaded = LoadedModel(name="Phi-3-mini-shaped, random weights", source="local", model=model,
                         tokenizer=tokenizer, device=device, dtype=str(dtype).removeprefix("torch."),
                         load_seconds=time.perf_counter() - start)
    decoded = guarded("decoding", decoding, loaded, args)
    phase("engine and generate")
    neighbours = guarded("neighbours", neighbour_search, model, tokenizer, device, args.batch, args.reps)
    phase("neighbours")
    result = {
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else
                       f"CPU ({platform.machine()}), dry run",
        "model": f"Phi3ForCausalLM, {args.layers} layers, hidden {args.hidden}, vocab 32064, random {loaded.dtype}",
        "tokenizer": tokenizer_label, "tokens_per_answer": args.tokens, "reps": args.reps, "gpu_tests": tests,
        "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "decoding": decoded, "neighbours": neighbours, "phases_s": phases, "seconds": time.perf_counter() - begin,
    }
    write_results("gpu", result, table(result), args.out)
    tests_passed = args.no_tests or tests.get("returncode") in (0, 5)  # 5: no GPU-marked tests collected
    return 0 if tests_passed and "failed" not in decoded and "failed" not in neighbours else 1


if __name__ == "__main__":
    sys.exit(main())
