"""Does FAISS run on this machine's GPU? Exits 0 after one exact search through a GPU flat index, built the way the
app builds it (core/embeddings/search.py); otherwise prints why in one line and exits 1.

The device command in docs/performance.md runs it on the repacked FAISS (prepare.sh) before `bench.gpu_check`, and
measures without FAISS when it fails: a broken library can abort the process, which must not be the check's.

    PYTHONPATH=/tmp/site python3 bench/gpu_faiss/probe.py
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        import faiss
        import numpy as np

        resources = faiss.StandardGpuResources()
        resources.setTempMemory(256 << 20)
        index = faiss.index_cpu_to_gpu(resources, 0, faiss.IndexFlatIP(8), faiss.GpuClonerOptions())
        rows = np.eye(8, dtype=np.float32)
        index.add(rows)
        _, ids = index.search(rows[::-1].copy(), 1)
    except Exception as exc:  # any failure means the same thing here: measure without FAISS
        print(f"FAISS GPU probe failed: {type(exc).__name__}: {exc}".splitlines()[0])
        return 1
    if ids.ravel().tolist() != list(range(7, -1, -1)):
        print(f"FAISS GPU probe failed: wrong neighbours {ids.ravel().tolist()}")
        return 1
    print(f"FAISS GPU ok: faiss {faiss.__version__}, {faiss.get_num_gpus()} GPU(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
