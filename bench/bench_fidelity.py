"""How close the quantized engines stay to the float32 model: the default CPU engine (ONNX Runtime, int8 weights)
and llama.cpp (the bundled Q4_1 GGUF), against transformers in float32 on the weights the app loads.

For each of 20 varied chat prompts, each engine writes its own greedy answer (up to 64 tokens); the answer is then
read back token by token as the engine computes it while generating (teacher-forced), giving the engine's
next-token distribution at every answer position, and transformers reads prompt + answer in float32. Per engine:
- top-1 agreement: the share of positions where float32's most likely token is the one the engine chose;
- mean KL(float32 ‖ engine) over positions (llama.cpp's perplexity tool reports the same divergence);
- mean absolute difference of the chosen tokens' log-probabilities.

Also what the ONNX engine costs to have: the packages' installed size, the converted model on disk, and the
first start's conversion time (converted afresh into a temporary folder).

    python -m bench.bench_fidelity [--tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.llamacpp import LlamaCppWorker, find_llamacpp
from bench.onnx_loop import greedy
from bench.results_io import write_results
from core.config import default_cache_dir
from core.engine.base import stop_token_ids
from core.engine.onnx_model import OnnxModel
from core.model.bundled import bundled_gguf_path
from core.model.loading import load_model
from core.model.onnx_export import onnx_checkpoint
from core.text.prompt import PromptBuilder

PROMPTS = [
    "What is the capital of Japan?", "Name three primary colors.", "Write a haiku about autumn leaves.",
    "Explain in one sentence why the sky is blue.", "Write a Python function that reverses a string.",
    "What is 17 times 3?", "Translate 'good morning' into French and Spanish.", "List four planets of the solar "
    "system.", "Give me a tip for sleeping better.", "What does a CPU do?", "Tell me a short joke about cats.",
    "Summarise the plot of Cinderella in two sentences.", "How do plants make their food?",
    "Write the opening line of a mystery novel.", "What is the difference between weather and climate?",
    "Suggest a name for a bakery.", "Why do we have seasons?", "Describe the taste of a lemon.",
    "What is a prime number? Give two examples.", "Write a limerick about a programmer.",
]
ONNX, LLAMACPP = "Token Lab default engine (ONNX Runtime, int8)", "llama.cpp (Q4_1 GGUF)"


def log_softmax(logits: np.ndarray) -> np.ndarray:
    return torch.log_softmax(torch.from_numpy(np.asarray(logits, np.float32)), dim=-1).numpy()


def onnx_greedy(model: OnnxModel, prompt: list[int], tokens: int, stop: set[int]) -> tuple[list[int], np.ndarray]:
    """The engine's greedy answer and the log-probabilities [answer, vocab] it chose each token from, computed as
    the chat computes them; the end token is left out, as llama.cpp's answers leave it out."""
    answer, rows = [], []
    for token, logits in greedy(model, prompt, tokens, stop):
        if token not in stop:
            answer.append(token)
            rows.append(log_softmax(logits))
    return answer, np.stack(rows) if rows else np.empty((0, model.vocab_size), np.float32)


def float32_rows(loaded, prompt: list[int], answer: list[int]) -> np.ndarray:
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([prompt + answer])).logits[0].float()
    return torch.log_softmax(logits[len(prompt) - 1:len(prompt) - 1 + len(answer)], dim=-1).numpy()


def compare(reference: np.ndarray, engine: np.ndarray, answer: list[int]) -> dict[str, list[float]]:
    """Per position: float32's top-1 == the engine's token, KL(float32 ‖ engine), and the absolute difference of the
    engine's token's log-probabilities."""
    p = np.exp(reference)
    kl = (p * (reference - engine)).sum(-1)
    index = np.arange(len(answer))
    return {"agree": (reference.argmax(-1) == np.asarray(answer)).astype(float).tolist(), "kl": kl.tolist(),
            "dlogp": np.abs(reference[index, answer] - engine[index, answer]).tolist()}


def installed_mb(*distributions: str) -> float:
    total = 0
    for name in distributions:
        for file in importlib.metadata.distribution(name).files or []:
            path = Path(file.locate())
            total += path.stat().st_size if path.is_file() else 0
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    loaded = load_model("bundled", device="cpu", cache_dir=default_cache_dir())
    builder = PromptBuilder(loaded.tokenizer)
    stop = set(stop_token_ids(loaded))
    with tempfile.TemporaryDirectory() as tmp:
        folder, convert_s = onnx_checkpoint(loaded.weights_dir, Path(tmp))
        onnx_bytes = sum(f.stat().st_size for f in folder.iterdir())
        model = OnnxModel(folder, args.threads)
        prompts = [builder.build(p, [], "", args.tokens, loaded.context_length).ids for p in PROMPTS]
        results: dict[str, dict[str, list[float]]] = {ONNX: {"agree": [], "kl": [], "dlogp": []}}
        for ids in prompts:
            answer, rows = onnx_greedy(model, ids, args.tokens, stop)
            if not answer:
                continue
            for key, values in compare(float32_rows(loaded, ids, answer), rows, answer).items():
                results[ONNX][key] += values
        python, reason = find_llamacpp()
        if python is not None:
            results[LLAMACPP] = {"agree": [], "kl": [], "dlogp": []}
            with LlamaCppWorker(python, bundled_gguf_path(), args.threads, logits_all=True) as worker:
                for i, ids in enumerate(prompts):
                    answer = worker.generate(ids, args.tokens)["ids"]
                    if not answer:
                        continue
                    rows = log_softmax(worker.logits(ids, answer, Path(tmp) / f"{i}.npy"))
                    for key, values in compare(float32_rows(loaded, ids, answer), rows, answer).items():
                        results[LLAMACPP][key] += values
        else:
            print(f"llama.cpp's row skipped: {reason}")
    summary = {name: {"positions": len(r["agree"]), "top1_agreement": statistics.mean(r["agree"]),
                      "mean_kl": statistics.mean(r["kl"]), "mean_abs_dlogp": statistics.mean(r["dlogp"]),
                      "p99_kl": float(np.percentile(r["kl"], 99))} for name, r in results.items()}
    packages = ("onnxruntime", "onnxruntime-genai", "onnx", "onnx-ir")
    size = installed_mb(*packages)
    data = {"prompts": PROMPTS, "tokens": args.tokens, "summary": summary, "per_position": results,
            "conversion_s": convert_s, "onnx_model_bytes": onnx_bytes, "installed_mb": size,
            "packages": {p: importlib.metadata.version(p) for p in packages},
            "targets": {"top1_agreement": 0.97, "mean_kl": 0.01, "mean_abs_dlogp": 0.05}}
    table = []
    for name, s in summary.items():
        table += [(f"{name}: top-1 agreement with float32 ({s['positions']} positions; target ≥ 97 %)",
                   f"{s['top1_agreement'] * 100:.1f} %"),
                  (f"{name}: mean KL(float32 ‖ engine) (target ≤ 0.01); p99", f"{s['mean_kl']:.4f}; "
                                                                              f"{s['p99_kl']:.3f}"),
                  (f"{name}: mean absolute Δ log p of the chosen tokens (target ≤ 0.05)", f"{s['mean_abs_dlogp']:.3f}")]
    table += [("first start: converting the bundled model to ONNX (int8)", f"{convert_s:.1f} s"),
              ("the converted model on disk", f"{onnx_bytes / 1e6:.0f} MB"),
              (f"installed size of {', '.join(packages)}", f"{size:.0f} MB")]
    write_results("fidelity", data, table)


if __name__ == "__main__":
    main()
