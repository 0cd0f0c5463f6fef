"""k-means building blocks: k-means++ seeding, faiss Lloyd iterations, fast nearest-centroid assignment."""

from __future__ import annotations

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from qarm.quant.checks import QuantizeError


def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator, n_local_trials: int | None = None) -> np.ndarray:
    """Greedy k-means++ seeds (Arthur & Vassilvitskii; sklearn's greedy variant).

    x float32 [n, d] -> centroids float32 [k, d]. Each step draws ``2 + log k`` candidates by D^2 sampling
    and keeps the one that lowers the potential most, which is what makes ++ seeding robust.
    """
    n = x.shape[0]
    trials = n_local_trials or 2 + int(np.log(k))
    sq = np.einsum("ij,ij->i", x, x)
    centers = np.empty((k, x.shape[1]), np.float32)
    centers[0] = x[rng.integers(n)]
    closest = np.maximum(sq - 2 * x @ centers[0] + centers[0] @ centers[0], 0)
    for c in range(1, k):
        pot = closest.sum()
        if pot <= 0:  # fewer distinct points than k: the rest duplicate existing seeds
            centers[c:] = x[rng.integers(n, size=k - c)]
            break
        cand = np.searchsorted(np.cumsum(closest, dtype=np.float64), rng.random(trials) * pot)
        cand = np.minimum(cand, n - 1)
        d_cand = np.maximum(sq[None, :] - 2 * x[cand] @ x.T + sq[cand, None], 0)  # [trials, n]
        d_cand = np.minimum(d_cand, closest[None, :])
        best = int(np.argmin(d_cand.sum(1)))
        centers[c] = x[cand[best]]
        closest = d_cand[best]
    return centers


def fit_kmeans(x: np.ndarray, k: int, *, n_iter: int, n_init: int, init: str, seed: int) -> tuple[np.ndarray, float]:
    """Best of ``n_init`` faiss k-means runs on x float32 [n, d] -> (centroids float32 [k, d], objective)."""
    n, d = x.shape
    if k > n:
        raise QuantizeError(f"cannot fit {k} clusters on {n} points: lower rq_sizes or give more items")
    best, best_obj = None, np.inf
    for restart in range(max(1, n_init)):
        rng = np.random.default_rng([seed, restart])
        # faiss would otherwise subsample to 256 points per centroid; the caller already sampled
        km = faiss.Kmeans(d, k, niter=n_iter, seed=int(rng.integers(2**31 - 1)), max_points_per_centroid=n + 1,
                          min_points_per_centroid=1, verbose=False)
        if init == "kmeans++":
            seed_x = x if n <= 20 * k else x[rng.choice(n, 20 * k, replace=False)]  # seeding on a sample: cheap, as good
            with threadpool_limits(1, "blas"):  # tiny GEMMs: BLAS threads only add sync overhead
                init_centroids = kmeans_plusplus(seed_x, k, rng)
            km.train(x, init_centroids=init_centroids)
        else:
            km.train(x)
        obj = float(km.obj[-1]) if len(km.obj) else np.inf
        if obj < best_obj:
            best, best_obj = km.centroids.copy(), obj
    return best, best_obj


class NearestCentroid:
    """Nearest centroid by squared L2 as one GEMM + argmin with precomputed norms.

    ``argmin_k ||r - c_k||^2 = argmin_k (||c_k||^2 + bias_k - 2 r.c_k)``; ``||r||^2`` is constant per row,
    so it is never computed. ``-2 C^T`` is stored once, so each chunk costs one sgemm and one pass.
    """

    def __init__(self, centroids: np.ndarray) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.neg2_ct = np.ascontiguousarray(-2.0 * self.centroids.T)
        self.norms = np.einsum("ij,ij->i", self.centroids, self.centroids).astype(np.float32)

    def scores(self, r: np.ndarray) -> np.ndarray:
        """r float32 [n, d] -> float32 [n, k] = ||c||^2 - 2 r.c (the squared distance minus ||r||^2)."""
        s = r @ self.neg2_ct
        s += self.norms
        return s

    def assign(self, r: np.ndarray) -> np.ndarray:
        """r float32 [n, d] -> int64 [n] index of the nearest centroid."""
        return self.scores(r).argmin(axis=1)
