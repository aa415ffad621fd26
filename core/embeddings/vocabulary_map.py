"""The whole vocabulary on one map: every token's position under a projection (PCA at once, UMAP from a background
process and a disk cache) and its category (core/embeddings/token_categories.py), for the Embeddings tab's map and
the /vocabulary_map endpoint.

Asking for UMAP before it is cached starts its computation once and answers with PCA meanwhile, saying so; later
starts, of this or any process on the same cache folder, read the cached file:

    vmap = VocabularyMap(index, cache_dir)
    layout = vmap.layout("umap", dims=2)    # PCA and a note at first; UMAP once ready
    layout.method, layout.coords.shape      # ('pca', (49152, 2))
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core import checks
from core.embeddings.projection import METHODS, UmapSettings, digest, pca, projection_key
from core.embeddings.results import VocabularyMapDict
from core.embeddings.token_categories import categories, legend_order

if TYPE_CHECKING:
    from core.embeddings.index import VocabIndex

log = logging.getLogger(__name__)

MAP_DIMS = (2, 3)
# the background process's threads: half the cores, so that chats and lookups keep the other half
PROJECTION_THREADS = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else os.cpu_count() or 2) // 2)
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
METHOD_NAMES = {"pca": "PCA", "umap": "UMAP"}


@dataclass
class MapLayout:
    """Coordinates of the map's tokens (ids 0 … n−1, float32 n × dims), the projection they come from (`method`,
    which is PCA while the one asked for is not ready) and a sentence saying what is shown."""

    method: str
    requested: str
    dims: int
    coords: np.ndarray
    note: str
    explained: tuple[float, ...] = ()  # PCA: each axis's share of the variance

    @property
    def ready(self) -> bool:
        return self.method == self.requested


class ProjectionJob:
    """One UMAP computation in a background process, writing `path`; `state()` says where it stands."""

    def __init__(self, rows: np.ndarray, path: Path, settings: UmapSettings, threads: int) -> None:
        self.path, self.settings = path, settings
        self.rows_path = path.with_name(f"{path.stem}.rows{os.getpid()}.npy")
        self.log_path = path.with_name(f"{path.stem}.log")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(self.rows_path, np.ascontiguousarray(rows, dtype=np.float32))
        env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads))}
        root = Path(__file__).resolve().parent.parent.parent
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "core.embeddings.projection_worker", str(self.rows_path), str(path),
                 json.dumps(asdict(settings))], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
        self.started = time.monotonic()

    def state(self) -> str:
        """"ready", "running" or "failed: <the last line the process wrote>"."""
        code = self.process.poll()
        if code is None:
            return "running"
        self.rows_path.unlink(missing_ok=True)
        if code == 0 and self.path.is_file():
            return "ready"
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return f"failed: {lines[-1] if lines else f'exit status {code}'}"

    def wait(self, timeout: float | None = None) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        return self.state()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.rows_path.unlink(missing_ok=True)


class VocabularyMap:
    """The map of the first `rows` tokens of `index` (all of them by default); see the module docstring."""

    def __init__(self, index: VocabIndex, cache_dir: Path | None, rows: int | None = None,
                 settings: UmapSettings = UmapSettings(), threads: int = PROJECTION_THREADS) -> None:
        self.index = index
        self.size = min(index.size, rows or index.size)
        self.settings, self.threads = settings, threads
        vocabulary = index.vocabulary
        self.categories = categories(vocabulary.texts[:self.size], vocabulary.special_ids, vocabulary.byte_ids)
        self.legend = legend_order(self.categories)
        self._own_dir = None if cache_dir is not None else tempfile.TemporaryDirectory(prefix="token-lab-map-")
        self.folder = Path(cache_dir if cache_dir is not None else self._own_dir.name) / "vocab-maps"
        self._lock = threading.Lock()
        self._digest: str | None = None
        self._pca: dict[int, tuple[np.ndarray, tuple[float, ...]]] = {}
        self._umap: dict[int, np.ndarray] = {}
        self._jobs: dict[int, ProjectionJob] = {}
        self._failed: dict[int, str] = {}
        self.jobs_started = 0

    @property
    def rows(self) -> np.ndarray:
        return self.index.unit_vectors[:self.size]

    def _path(self, dims: int) -> Path:
        if self._digest is None:
            self._digest = digest(self.rows)
        return self.folder / f"{projection_key(self._digest, replace(self.settings, dims=dims))}.npy"

    def pca(self, dims: int) -> tuple[np.ndarray, tuple[float, ...]]:
        with self._lock:
            if dims not in self._pca:
                self._pca[dims] = pca(self.rows, dims)
            return self._pca[dims]

    def umap_state(self, dims: int, start: bool = True) -> str:
        """"ready", "running", "not started", "unavailable" or "failed: …"; with `start`, a missing projection's
        computation begins (once per process and dimension count)."""
        with self._lock:
            if dims in self._umap:
                return "ready"
            if dims in self._failed:
                return self._failed[dims]
            path = self._path(dims)
            job = self._jobs.get(dims)
            if job is None and path.is_file():
                state = "ready"
            elif job is None and not start:
                return "not started"
            elif job is None and importlib.util.find_spec("umap") is None:
                return "unavailable"
            else:
                if job is None:
                    job = self._jobs[dims] = ProjectionJob(self.rows, path, replace(self.settings, dims=dims),
                                                           self.threads)
                    self.jobs_started += 1
                state = job.state()
            if state == "ready":
                coords = np.load(path, allow_pickle=False)
                if coords.shape != (self.size, dims):
                    self._failed[dims] = f"failed: the cached file {path.name} has shape {coords.shape}"
                    return self._failed[dims]
                self._umap[dims] = coords
            elif state.startswith("failed"):
                log.warning("UMAP projection %s", state)
                self._failed[dims] = state
            return state

    def wait(self, dims: int, timeout: float | None = None) -> str:
        """Start the UMAP projection if needed and wait for it (tests and benchmarks)."""
        self.umap_state(dims)
        job = self._jobs.get(dims)
        if job is not None:
            job.wait(timeout)
        return self.umap_state(dims)

    def layout(self, method: str = "umap", dims: int = 2) -> MapLayout:
        """The coordinates under `method` ("pca" or "umap") in `dims` (2 or 3) dimensions: PCA, with a note saying
        why, while UMAP is computing, failed or is not installed."""
        method = checks.choice(method, "projection", METHODS)
        dims = checks.integer(dims, "dims", MAP_DIMS[0], MAP_DIMS[-1])
        state = self.umap_state(dims) if method == "umap" else ""
        if state == "ready":
            s = self.settings
            note = (f"UMAP of {self.size:,} unit embedding rows ({s.metric}, {s.n_neighbors} neighbours, "
                    f"min_dist {s.min_dist:g}, seed {s.seed}); the axes have no units, distances between clusters "
                    "mean little.")
            return MapLayout("umap", "umap", dims, self._umap[dims], note)
        coords, explained = self.pca(dims)
        shares = ", ".join(f"PC{j + 1} {share:.1%}" for j, share in enumerate(explained))
        pca_note = f"PCA of {self.size:,} unit embedding rows (variance: {shares})."
        if method == "pca":
            return MapLayout("pca", "pca", dims, coords, pca_note, explained)
        if state == "running":
            job = self._jobs[dims]
            why = (f"UMAP is being computed in the background (started {time.monotonic() - job.started:.0f} s ago; "
                   "about a minute for 50,000 tokens on 2 cores); the map switches to it when it is ready")
        elif state == "unavailable":
            why = "UMAP needs the umap-learn package, which is not installed"
        else:
            why = f"UMAP could not be computed ({state.removeprefix('failed: ')})"
        return MapLayout("pca", "umap", dims, coords, f"{why}. Showing {pca_note}", explained)

    def answer(self, method: str = "pca", limit: int = 1000, dims: int = 2) -> VocabularyMapDict:
        """The API's answer: the first `limit` tokens (by id) with their pieces, categories and coordinates."""
        limit = checks.integer(limit, "limit", 1, self.size)
        layout = self.layout(method, dims)
        coords = np.round(layout.coords[:limit].astype(np.float64), 4)
        return {"projection": layout.method, "requested": layout.requested, "ready": layout.ready,
                "note": layout.note, "tokens": self.size, "ids": list(range(limit)),
                "pieces": self.index.vocabulary.pieces[:limit], "categories": self.categories[:limit],
                "coordinates": coords.tolist()}

    def close(self) -> None:
        """Stop a projection still running (its result would be cached for the next start otherwise)."""
        with self._lock:
            for job in self._jobs.values():
                job.stop()
        if self._own_dir is not None:
            self._own_dir.cleanup()
