"""Projections of the whole vocabulary's unit embedding rows to 2 or 3 dimensions, for the vocabulary map.

PCA is instant (the eigenvectors of a d×d covariance matrix) and computed where it is asked for. UMAP (cosine,
15 neighbours) keeps each token's neighbourhood and so shows clusters PCA flattens, but takes about a minute on the
full vocabulary: it runs in a background process (core/embeddings/projection_worker.py) and its result is cached
on disk under a key made of the rows' digest, the method, its parameters and umap-learn's version, so a different
model, setting or library never reads another's map:

    coords, explained = pca(unit_rows, dims=2)
    key = projection_key(digest(unit_rows), UmapSettings(dims=2))
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib import metadata

import numpy as np

from core.embeddings.table_cache import cache_key

PROJECTION_FORMAT = "vocab-map-v1"  # change it when a cached projection's contents or meaning change
METHODS = ("pca", "umap")


@dataclass(frozen=True)
class UmapSettings:
    """umap-learn's parameters for the map. A fixed `seed` makes the layout reproducible (umap then runs its
    optimisation on one thread, which the background process wants anyway); None lets it use every thread it is
    given, and gives another layout each time."""

    dims: int = 2
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    seed: int | None = 42


def digest(rows: np.ndarray) -> str:
    """A short fingerprint of the rows' exact bytes and shape: what tells one model's matrix from another's."""
    data = np.ascontiguousarray(rows, dtype=np.float32)
    hasher = hashlib.sha256(str(data.shape).encode())
    hasher.update(memoryview(data).cast("B"))
    return hasher.hexdigest()[:32]


def library_version(name: str = "umap-learn") -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def projection_key(rows_digest: str, settings: UmapSettings) -> str:
    """The cache file's name for this matrix, method, parameters and library version."""
    return cache_key([PROJECTION_FORMAT, "umap", json.dumps(asdict(settings), sort_keys=True),
                      library_version("umap-learn"), library_version("pynndescent"), rows_digest])


def pca(rows: np.ndarray, dims: int = 2) -> tuple[np.ndarray, tuple[float, ...]]:
    """The rows on their first `dims` principal axes (float32, n × dims) and each axis's share of the variance.
    Each axis's sign is fixed (its largest loading positive), so the same rows always give the same picture."""
    x = np.asarray(rows, dtype=np.float32)
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    centred = x - mean
    cov = (centred.T @ centred).astype(np.float64) / max(1, len(x) - 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:dims]
    axes = vectors[:, order]
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    axes *= np.where(signs == 0, 1.0, signs)
    coords = centred @ axes.astype(np.float32)
    total = float(values.sum()) or 1.0
    return coords, tuple(float(values[j] / total) for j in order)


def umap(rows: np.ndarray, settings: UmapSettings) -> np.ndarray:
    """UMAP of the rows (float32, n × dims). Slow on tens of thousands of rows: call it in the background process."""
    import umap as umap_learn  # numba, pynndescent and scikit-learn come with it: only the worker pays for them

    reducer = umap_learn.UMAP(n_components=settings.dims, n_neighbors=settings.n_neighbors,
                              min_dist=settings.min_dist, metric=settings.metric, random_state=settings.seed,
                              n_jobs=1 if settings.seed is not None else -1, low_memory=True)
    return np.asarray(reducer.fit_transform(np.asarray(rows, dtype=np.float32)), dtype=np.float32)
