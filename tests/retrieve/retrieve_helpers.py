"""Tiny synthetic sequences with a learnable rule: each user walks the catalogue item -> item + 1."""

from __future__ import annotations

import numpy as np


def walk_data(n_items: int = 60, n_users: int = 120, seed: int = 0):
    """(codes int [n_items, 2] with collisions, train seqs, valid hist/target, test hist/target)."""
    rng = np.random.default_rng(seed)
    codes = np.stack([np.arange(n_items) // 10, (np.arange(n_items) // 2) % 5], 1)  # pairs of items collide
    seqs = [(rng.integers(n_items) + np.arange(rng.integers(6, 14))) % n_items for _ in range(n_users)]
    train = [s[:-2] for s in seqs]
    return (codes, train, train, np.array([s[-2] for s in seqs]), [s[:-1] for s in seqs],
            np.array([s[-1] for s in seqs]))


TINY = dict(max_len=8, dim=32, layers=1, heads=2, dropout=0.0, batch_size=64, lr=3e-3, beam_size=10,
            device="cpu", seed=0)
