"""Exact top-k inner products over one matrix of float32 rows, by the cheapest exact path for the work at hand.

- A few queries on the CPU (the views' lookups, fewer than SMALL_BATCH): FAISS 8-bit `IndexScalarQuantizer` shards
  (a quarter of the float32 bytes) scanned in parallel, one thread per shard, each running FAISS with one OpenMP
  thread; the candidates are re-scored exactly in float32. The scan widens until a bound on the quantization error
  (per dimension, measured when the shards are built) proves that nothing it left out can beat the k-th exact score.
- Batches on the CPU (the embedding evaluation): a float32 matmul per chunk of queries, and torch.topk.
- With CUDA and FAISS built with GPU support: one exact flat index on the GPU, behind a lock (FAISS GPU indexes are
  not thread-safe).

    search = ExactSearch(unit_rows, gpu=None, pool=pool, shards=2)
    scores, ids = search.search(queries, k=10)                           # best first, per query
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np
import torch

SMALL_BATCH = 20  # from this many queries on, one matmul over all rows beats the sharded 8-bit scan
RERANK_MARGIN = 32  # extra coarse candidates (per shard) re-scored exactly in float32
MAX_SHARDS = 8  # threads scanning one lookup's shards in parallel
BATCH_CHUNK = 256  # queries scored per matmul: bounds the score matrix's memory
GPU_MAX_K = 2048  # FAISS GPU's largest k


class GpuContext:
    """FAISS GPU resources for one device, and the lock every GPU search takes."""

    def __init__(self, device: int) -> None:
        self.device = device
        self.lock = threading.Lock()
        self.resources = faiss.StandardGpuResources()
        self.resources.setTempMemory(256 << 20)

    def flat_index(self, matrix: np.ndarray) -> Any:
        cpu = faiss.IndexFlatIP(matrix.shape[1])
        cpu.add(matrix)
        return faiss.index_cpu_to_gpu(self.resources, self.device, cpu, faiss.GpuClonerOptions())


def gpu_available() -> bool:
    """True when torch sees CUDA and this FAISS build has GPU support and sees a GPU."""
    return torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class ExactSearch:
    """The exact top k of `matrix @ query` for any number of queries (see the module docstring)."""

    def __init__(self, matrix: np.ndarray, gpu: GpuContext | None, pool: ThreadPoolExecutor | None,
                 shards: int) -> None:
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.n, self.d = self.matrix.shape
        self.gpu, self.pool = gpu, pool
        self.gpu_index = gpu.flat_index(self.matrix) if gpu is not None else None
        self.shards: list[tuple[Any, int]] = []  # (8-bit index, id of its first row)
        if gpu is not None:
            return
        # per dimension, the largest |x - decode(encode(x))| over all rows: bounds the coarse scores' error
        self.coarse_error = np.zeros(self.d, dtype=np.float32)
        for rows in np.array_split(np.arange(self.n), shards if pool is not None else 1):
            if not len(rows):
                continue
            part = np.ascontiguousarray(self.matrix[rows[0]:rows[-1] + 1])
            sq = faiss.IndexScalarQuantizer(self.d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            sq.train(part)
            sq.add(part)
            error = np.abs(part - sq.sa_decode(sq.sa_encode(part))).max(axis=0)
            np.maximum(self.coarse_error, error, out=self.coarse_error)
            self.shards.append((sq, int(rows[0])))
        self.largest_shard = max(sq.ntotal for sq, _ in self.shards)
        self.max_abs = float(np.abs(self.matrix).max())

    @property
    def cpu_bytes(self) -> int:
        return self.n * self.d * (4 + (1 if self.shards else 0))

    @property
    def gpu_bytes(self) -> int:
        return self.n * self.d * 4 if self.gpu_index is not None else 0

    @property
    def max_k(self) -> int:
        return min(self.n, GPU_MAX_K) if self.gpu_index is not None else self.n

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by inner product for each row of `queries` (float32, m x d): (scores, ids), best first."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(int(k), self.max_k))
        if self.gpu_index is not None:
            with self.gpu.lock:
                return self.gpu_index.search(queries, k)
        if len(queries) < SMALL_BATCH:
            return self._coarse_then_exact(queries, k)
        return self._matmul_topk(queries, k)

    def _matmul_topk(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = torch.from_numpy(self.matrix)
        scores, ids = [], []
        with torch.inference_mode():
            for start in range(0, len(queries), BATCH_CHUNK):
                top = torch.topk(torch.from_numpy(queries[start:start + BATCH_CHUNK]) @ rows.T, k, dim=1)
                scores.append(top.values.numpy())
                ids.append(top.indices.numpy())
        return np.concatenate(scores), np.concatenate(ids).astype(np.int64)

    def _scan(self, queries: np.ndarray, fetch: int) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """Each shard's best `fetch` (coarse scores, global ids, whether the shard was exhausted), shards scanned in
        parallel by the pool."""
        jobs = []
        for sq, start in self.shards:
            want = min(fetch, sq.ntotal)
            if self.pool is not None and len(self.shards) > 1:
                jobs.append((self.pool.submit(sq.search, queries, want), start, want == sq.ntotal))
            else:
                jobs.append((sq.search(queries, want), start, want == sq.ntotal))
        out = []
        for job, start, exhausted in jobs:
            scores, ids = job if isinstance(job, tuple) else job.result()
            out.append((scores, np.where(ids >= 0, ids + start, -1), exhausted))
        return out

    def _coarse_then_exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidates from the 8-bit scan, re-scored exactly in float32; provably the exact top k.

        An item the scan did not return scores at most (its shard's last returned coarse score) + eps in truth,
        where eps = sum_i |q_i| * coarse_error_i bounds the quantization error (plus float rounding slack). When
        the exact k-th score is not above that bound, the scan is repeated with 4x more candidates."""
        m = len(queries)
        out_scores = np.full((m, k), -np.inf, dtype=np.float32)
        out_ids = np.full((m, k), -1, dtype=np.int64)
        abs_q = np.abs(queries)
        eps = abs_q @ self.coarse_error + 1e-5 * abs_q.sum(axis=1) * self.max_abs + 1e-6
        pending = np.arange(m)
        fetch = k + RERANK_MARGIN
        while len(pending):
            scans = self._scan(queries[pending], fetch)
            still = []
            for j, row in enumerate(pending):
                cand = np.concatenate([ids[j] for _, ids, _ in scans])
                cand = cand[cand >= 0]
                exact = self.matrix[cand] @ queries[row]
                order = np.argsort(-exact, kind="stable")[:k]
                bounds = [scores[j][-1] for scores, _, exhausted in scans if not exhausted]
                done = not bounds or (len(order) == k and exact[order[-1]] >= max(bounds) + eps[row])
                if done:
                    out_scores[row, :len(order)] = exact[order]
                    out_ids[row, :len(order)] = cand[order]
                else:
                    still.append(row)
            pending = np.asarray(still, dtype=np.int64)
            fetch = min(self.largest_shard, fetch * 4)
        return out_scores, out_ids
