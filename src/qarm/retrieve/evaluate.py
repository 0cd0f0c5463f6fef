"""Recall@K and NDCG@K of top-K lists over the full catalogue, one held-out target per user.

With one relevant item per user, Recall@K is the hit rate (target among the first K) and NDCG@K is
1 / log2(1 + rank) when the target is at ``rank`` <= K, else 0; both averaged over users.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """ranked int [U, K] item rows best first (-1 = empty slot); targets int [U] -> 1-based rank int64 [U],
    0 where the target is not in the list."""
    hit = np.asarray(ranked) == np.asarray(targets)[:, None]
    found = hit.any(axis=1)
    return np.where(found, hit.argmax(axis=1) + 1, 0).astype(np.int64)


def recall_ndcg(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """{recall@k, ndcg@k} for each k from 1-based ranks (0 = miss); NaN over no users."""
    out: dict[str, float] = {}
    for k in ks:
        inside = (ranks > 0) & (ranks <= k)
        out[f"recall@{k}"] = float(inside.mean()) if len(ranks) else float("nan")
        gain = np.where(inside, 1.0 / np.log2(1.0 + np.maximum(ranks, 1)), 0.0)
        out[f"ndcg@{k}"] = float(gain.mean()) if len(ranks) else float("nan")
    return out


def retrieval_figures(ranked: np.ndarray, targets: np.ndarray, ks: Sequence[int], cold: np.ndarray,
                      buckets: np.ndarray | None = None) -> dict:
    """The figures of one method: recall/ndcg at every k, ``recall_by_k``, ``cold_recall@10`` (and @k for
    every k) over users whose target is a held-out item, and ``recall@10_by_bucket`` by the target's
    frequency bucket (``buckets`` str [U])."""
    ranks = target_ranks(ranked, targets)
    ks = sorted(set(ks) | {5, 10})
    out: dict = recall_ndcg(ranks, ks)
    out["recall_by_k"] = {str(k): out[f"recall@{k}"] for k in ks}
    cold = np.asarray(cold, bool)
    cold_fig = recall_ndcg(ranks[cold], ks)
    out["cold_recall@10"] = cold_fig["recall@10"]
    out["cold_ndcg@10"] = cold_fig["ndcg@10"]
    out["warm_recall@10"] = recall_ndcg(ranks[~cold], [10])["recall@10"]
    if buckets is not None:
        buckets = np.asarray(buckets).astype(str)
        out["recall@10_by_bucket"] = {b: recall_ndcg(ranks[buckets == b], [10])["recall@10"]
                                      for b in sorted(set(buckets.tolist()), key=_bucket_key)}
    return out


def _bucket_key(label: str) -> tuple[float, str]:
    head = label.split("-")[0].rstrip("+")
    return (float(head) if head.isdigit() else float("inf"), label)


def mean_std_over_seeds(per_seed: list[dict]) -> dict:
    """One figure dict from several seeds: numbers -> {"mean", "std"} (population std), nested dicts
    recursively; a single seed keeps plain numbers."""
    if len(per_seed) == 1:
        return per_seed[0]
    out: dict = {}
    for key, first in per_seed[0].items():
        vals = [d[key] for d in per_seed]
        if isinstance(first, dict):
            out[key] = mean_std_over_seeds(vals)
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            arr = np.asarray(vals, np.float64)
            out[key] = {"mean": float(np.mean(arr)), "std": float(np.std(arr))}
        else:
            out[key] = first
    return out
