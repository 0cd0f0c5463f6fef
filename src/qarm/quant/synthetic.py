"""Clustered synthetic embeddings for tests and benchmarks (not uniform noise: real embeddings cluster).

Two-level mixture: topics hold clusters, clusters hold items; cluster sizes follow a Zipf law. Within a
cluster, items vary along a few cluster-specific directions with a decaying spectrum (as real embedding
neighbourhoods do) plus a little isotropic noise. Rows are L2-normalised like the aligned embeddings.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits


def clustered_embeddings(n: int, dim: int, *, n_clusters: int | None = None, rank: int = 16, spread: float = 4.0,
                         noise: float = 1.0, zipf: float = 0.8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (emb float32 [n, dim] L2-normalised, cluster int64 [n]).

    ``spread``: length of a cluster's leading direction of variation (a centre has length about sqrt(1.5 dim));
    ``noise``: length of the isotropic noise; ``zipf``: exponent of the cluster-size law.
    """
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(8, n // 50)
    n_topics = max(2, int(np.sqrt(n_clusters)))
    topics = rng.standard_normal((n_topics, dim)).astype(np.float32)
    centers = topics[rng.integers(n_topics, size=n_clusters)] + 0.7 * rng.standard_normal((n_clusters, dim)).astype(np.float32)
    weight = 1.0 / np.arange(1, n_clusters + 1) ** zipf
    cluster = np.sort(rng.choice(n_clusters, size=n, p=weight / weight.sum()))
    spectrum = (np.arange(1, rank + 1) ** -0.5).astype(np.float32) * spread / np.sqrt(dim)
    emb = np.empty((n, dim), np.float32)
    bounds = np.searchsorted(cluster, np.arange(n_clusters + 1))
    with threadpool_limits(1, "blas"):  # thousands of tiny GEMMs: BLAS threads would only contend
        for c in np.flatnonzero(np.diff(bounds)):
            lo, hi = bounds[c], bounds[c + 1]
            basis = rng.standard_normal((rank, dim), dtype=np.float32) * spectrum[:, None]
            emb[lo:hi] = centers[c] + rng.standard_normal((hi - lo, rank), dtype=np.float32) @ basis
    emb += rng.standard_normal((n, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
    perm = rng.permutation(n)
    emb, cluster = emb[perm], cluster[perm]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, cluster
