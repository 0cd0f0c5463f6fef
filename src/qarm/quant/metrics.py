"""Code-quality figures: collisions, per-level usage, reconstruction error, VQ diversity."""

from __future__ import annotations

import numpy as np


def collision_stats(codes: np.ndarray) -> dict:
    """Full-code statistics of codes int [n, L].

    collision_rate: share of items whose full code another item also has; unique_sid_ratio: distinct full
    codes / items; mean/max items per used full code.
    """
    n = len(codes)
    if n == 0:
        return {"collision_rate": 0.0, "unique_sid_ratio": 0.0, "mean_items_per_code": 0.0, "max_items_per_code": 0}
    _, inverse, counts = np.unique(np.ascontiguousarray(codes), axis=0, return_inverse=True, return_counts=True)
    return {"collision_rate": float((counts[inverse.ravel()] > 1).mean()),
            "unique_sid_ratio": float(len(counts) / n),
            "mean_items_per_code": float(n / len(counts)),
            "max_items_per_code": int(counts.max())}


def level_usage(codes: np.ndarray, sizes: list[int]) -> tuple[list[float], list[float]]:
    """Per level: utilisation (share of the K_l codes used) and perplexity (exp of the code-usage entropy)."""
    util, perp = [], []
    for level, k in enumerate(sizes):
        counts = np.bincount(codes[:, level], minlength=k)
        p = counts[counts > 0] / max(len(codes), 1)
        util.append(float((counts > 0).sum() / k))
        perp.append(float(np.exp(-(p * np.log(p)).sum())) if len(p) else 0.0)
    return util, perp


def rel_recon_errors(X: np.ndarray, codes: np.ndarray, codebooks: list[np.ndarray], chunk: int = 65536) -> list[float]:
    """Relative reconstruction error sum ||x - xhat_l||^2 / sum ||x||^2 after each level l (xhat_l: levels 1..l)."""
    errs = np.zeros(len(codebooks))
    total = 0.0
    for s in range(0, len(X), chunk):
        r = np.array(X[s:s + chunk], dtype=np.float32)
        total += float(np.einsum("ij,ij->", r, r))
        for level, C in enumerate(codebooks):
            r -= C[codes[s:s + chunk, level]]
            errs[level] += float(np.einsum("ij,ij->", r, r))
    return (errs / max(total, 1e-30)).tolist()


def rq_metrics(X: np.ndarray, codes: np.ndarray, codebooks: list[np.ndarray], sizes: list[int]) -> dict:
    """The ``rq.*`` figures of the quantize stage for embeddings X [n, dim] and their codes [n, L]."""
    coll = collision_stats(codes)
    util, perp = level_usage(codes, sizes)
    rel = rel_recon_errors(X, codes, codebooks)
    sq_norm = float(np.mean(np.einsum("ij,ij->i", X, X))) if len(X) else 0.0
    return {"rq.levels": len(sizes), "rq.sizes": list(sizes),
            "rq.collision_rate": coll["collision_rate"], "rq.unique_sid_ratio": coll["unique_sid_ratio"],
            "rq.max_items_per_code": coll["max_items_per_code"], "rq.mean_items_per_code": coll["mean_items_per_code"],
            "rq.utilization": util, "rq.perplexity": perp, "rq.rel_recon_error": rel,
            "rq.mse": rel[-1] * sq_norm if rel else 0.0}


def vq_metrics(codes: np.ndarray, pool_size: int, k: int) -> dict:
    """The ``vq.*`` figures: K, pool size, distinct pool positions used, and how evenly they are used."""
    counts = np.bincount(codes.ravel(), minlength=pool_size) if codes.size else np.zeros(pool_size, int)
    return {"vq.k": int(k), "vq.pool_size": int(pool_size), "vq.distinct_codes_used": int((counts > 0).sum()),
            "vq.max_uses_per_code": int(counts.max()) if counts.size else 0}
