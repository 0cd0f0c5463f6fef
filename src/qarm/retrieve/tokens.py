"""Semantic IDs as token sequences: RQ tuple + a dedup level, each level with its own token range.

Two items with the same RQ tuple would be one generation target; a last ``dedup`` level (0, 1, 2, ...
within each group of identical tuples, in item order) makes every item's tuple unique, as TIGER does.
Token ids: 0 is padding; level l's code c is ``1 + offsets[l] + c``.
"""

from __future__ import annotations

import numpy as np

from qarm.errors import DataError


def add_dedup(codes: np.ndarray) -> np.ndarray:
    """codes int [n, L] -> int64 [n, L + 1]: the tuple plus its rank among items sharing it (row order)."""
    codes = np.asarray(codes, np.int64)
    if codes.ndim != 2 or codes.shape[1] < 1:
        raise DataError(f"expected codes of shape [n, L], got {codes.shape}")
    if (codes < 0).any():
        raise DataError("codes must be non-negative")
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    grp = inverse[order]
    first = np.r_[0, np.flatnonzero(grp[1:] != grp[:-1]) + 1]
    start = np.repeat(first, np.diff(np.r_[first, len(grp)]))
    dedup = np.empty(len(codes), np.int64)
    dedup[order] = np.arange(len(codes)) - start
    return np.concatenate([codes, dedup[:, None]], axis=1)


class TokenSpace:
    """Per-level code ranges of a code table int [n, T] (T levels incl. dedup) and its token ids."""

    def __init__(self, codes: np.ndarray) -> None:
        codes = np.asarray(codes, np.int64)
        self.sizes = [int(c) + 1 for c in codes.max(axis=0)] if len(codes) else [1] * codes.shape[1]
        self.offsets = np.r_[0, np.cumsum(self.sizes)].astype(np.int64)
        self.n_levels = len(self.sizes)
        self.vocab = 1 + int(self.offsets[-1])  # + padding id 0

    def tokens(self, codes: np.ndarray) -> np.ndarray:
        """codes int [..., T] -> token ids int64 [..., T]."""
        return 1 + self.offsets[:-1] + np.asarray(codes, np.int64)

    def level_slice(self, level: int) -> slice:
        """Token ids of ``level``: ``slice(start, stop)``."""
        return slice(1 + int(self.offsets[level]), 1 + int(self.offsets[level + 1]))
