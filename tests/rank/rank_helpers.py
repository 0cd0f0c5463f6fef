"""Helpers shared by the rank tests (plain functions, not fixtures)."""

from __future__ import annotations

import numpy as np


def tiny_overrides(variant: str, epochs: int) -> list[str]:
    return [f"rank.variants=[{variant}]", "rank.seeds=[0]", f"rank.epochs={epochs}", "rank.patience=0",
            "rank.threads=1", "rank.batch_size=256", "rank.dnn_hidden=[64, 32]"]


def brute_history(users: np.ndarray, ts: np.ndarray, items: np.ndarray, positive: np.ndarray,
                  u: int, t: int, n: int) -> list[int]:
    """The last ``n`` positive items of user ``u`` strictly before ``t`` (event order), by plain masking."""
    return items[positive & (users == u) & (ts < t)][-n:].tolist()
