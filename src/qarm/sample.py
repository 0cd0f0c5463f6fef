"""Seeded row samples: how evaluations and fits bound their cost on large inputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_rows(n: int, max_rows: int, seed: int | Sequence[int]) -> np.ndarray:
    """Sorted row indices int64 [min(n, max_rows)]: every row when ``max_rows <= 0`` or
    ``n <= max_rows``, else ``max_rows`` rows drawn without replacement by
    ``numpy.random.default_rng(seed)`` (same n, max_rows, seed: same rows)."""
    if max_rows <= 0 or n <= max_rows:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False)).astype(np.int64)
