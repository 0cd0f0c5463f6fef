"""Ranking metrics, vectorised: AUC (ties averaged), GAUC, LogLoss, AUC per group."""

from __future__ import annotations

import numpy as np


def _grouped_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group AUC via ranks (Mann-Whitney U), ties get their average rank.

    labels int/float [n] in {0, 1}; scores float [n]; groups int [n].
    Returns (group ids, auc float64 [G] (NaN where a group lacks a class), impressions int64 [G]).
    """
    order = np.lexsort((scores, groups))
    g, s, y = groups[order], scores[order], labels[order].astype(np.float64)
    n = len(g)
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_run = new_group | np.r_[True, s[1:] != s[:-1]]             # runs of tied scores within a group
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_end = np.r_[run_start[1:], n]
    group_start = np.flatnonzero(new_group)
    group_of_run = np.cumsum(new_group)[run_start] - 1
    # average 1-based rank within the group of each tie run
    avg_rank = (run_start + run_end - 1) / 2.0 - group_start[group_of_run] + 1.0
    rank = avg_rank[run_id]
    gid = np.cumsum(new_group) - 1
    n_pos = np.bincount(gid, weights=y)
    n_all = np.bincount(gid).astype(np.float64)
    n_neg = n_all - n_pos
    rank_sum = np.bincount(gid, weights=rank * y)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return g[group_start], auc, n_all.astype(np.int64)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` [n]; NaN when only one class is present."""
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    if len(labels) == 0:
        return float("nan")
    return float(_grouped_auc(labels, scores, np.zeros(len(labels), np.int64))[1][0])


def gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> float:
    """Per-user AUC weighted by the user's impressions, over users with both classes."""
    if len(labels) == 0:
        return float("nan")
    _, a, w = _grouped_auc(np.asarray(labels), np.asarray(scores, np.float64), np.asarray(users))
    ok = ~np.isnan(a)
    return float((a[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities ``probs`` [n]."""
    if len(labels) == 0:
        return float("nan")
    p = np.clip(np.asarray(probs, np.float64), eps, 1 - eps)
    y = np.asarray(labels, np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def auc_by_group(labels: np.ndarray, scores: np.ndarray, names: np.ndarray) -> dict[str, float]:
    """AUC per value of ``names`` (e.g. the item-frequency bucket of each event's item)."""
    names = np.asarray(names).astype(str)
    keys, codes = np.unique(names, return_inverse=True)
    ids, a, _ = _grouped_auc(np.asarray(labels), np.asarray(scores, np.float64), codes)
    return {str(keys[i]): float(v) for i, v in zip(ids, a)}
