"""Most-popular baseline: items by their interaction count in the training sequences."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator


class PopularityRetriever(BaseEstimator):
    """Ranks items by training-sequence count (ties: lower item row first), history items removed.

    Learned: ``counts_`` int64 [n_items], ``order_`` int64 [n_items] item rows most popular first.
    """

    def __init__(self, exclude_history: bool = True) -> None:
        self.exclude_history = exclude_history

    def fit(self, n_items: int, train_seqs: list[np.ndarray]) -> PopularityRetriever:
        flat = np.concatenate([np.asarray(s, np.int64) for s in train_seqs]) if train_seqs else np.empty(0, np.int64)
        self.counts_ = np.bincount(flat, minlength=n_items).astype(np.int64)
        self.order_ = np.lexsort((np.arange(n_items), -self.counts_))
        return self

    def recommend(self, histories: list[np.ndarray], k: int) -> np.ndarray:
        """Top-k item rows int64 [U, k]; only the first k + len(history) popular items are ever read."""
        out = np.full((len(histories), k), -1, np.int64)
        for i, h in enumerate(histories):
            head = self.order_[:k + (len(h) if self.exclude_history else 0)]
            if self.exclude_history:
                head = head[~np.isin(head, h)]
            out[i, :min(k, len(head))] = head[:k]
        return out
