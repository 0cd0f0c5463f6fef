"""Global temporal split plus the strict item cold-start hold-out.

- Events are sorted by (timestamp, user_id, item_id). Cutoffs are the timestamps at the
  ``train_frac`` and ``train_frac + valid_frac`` quantiles of events: ``train`` = before the
  first cutoff, ``valid`` = between, ``test`` = from the second cutoff on.
- A share ``holdout_item_frac`` of the catalog, drawn with ``seed``, is held out entirely: its
  events become ``cold_test`` (test period) or ``cold_excluded`` (earlier; used nowhere).
- Item flags: ``cold`` = held out, or first seen at/after the train cutoff (or never seen);
  ``train_count`` = train events; ``freq_bucket`` from ``freq_bucket_edges``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from qarm.data.config import SplitConfig
from qarm.data.schema import SPLITS
from qarm.errors import ConfigError


def check_split_config(cfg: SplitConfig) -> None:
    if not 0.0 < cfg.train_frac < 1.0:
        raise ConfigError(f"split.train_frac: expected 0 < value < 1, got {cfg.train_frac}")
    if cfg.valid_frac < 0.0 or cfg.train_frac + cfg.valid_frac >= 1.0:
        raise ConfigError(f"split.valid_frac: expected >= 0 with train_frac + valid_frac < 1, got {cfg.valid_frac}")
    if not 0.0 <= cfg.holdout_item_frac < 1.0:
        raise ConfigError(f"split.holdout_item_frac: expected 0 <= value < 1, got {cfg.holdout_item_frac}")
    edges = list(cfg.freq_bucket_edges)
    if not edges or any(e < 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ConfigError(f"split.freq_bucket_edges: expected strictly increasing non-negative integers, got {edges}")


def bucket_labels(edges: list[int]) -> list[str]:
    """Labels of the buckets: ``"0"`` (never trained on) then one per ``[edge, next_edge)``.

    ``[0, 5, 20, 100]`` -> ``["0", "1-4", "5-19", "20-99", "100+"]``.
    """
    lows = sorted({1, *(e for e in edges if e > 0)})
    labels = ["0"]
    for lo, hi in zip(lows, lows[1:] + [None]):
        labels.append(f"{lo}+" if hi is None else (f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}"))
    return labels


def freq_buckets(train_count: np.ndarray, edges: list[int]) -> np.ndarray:
    """Bucket label per count (object array of str), see :func:`bucket_labels`."""
    lows = np.array(sorted({1, *(e for e in edges if e > 0)}), dtype=np.int64)
    idx = np.where(train_count <= 0, 0, np.searchsorted(lows, train_count, side="right"))
    return np.array(bucket_labels(edges), dtype=object)[idx]


def draw_holdout(item_ids: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Bool mask [n_items]: the held-out items, ``round(frac * n)`` of them, drawn with ``seed``."""
    n_hold = int(round(frac * len(item_ids)))
    rng = np.random.default_rng([seed, 0x5EED, 3])
    mask = np.zeros(len(item_ids), dtype=bool)
    mask[rng.choice(len(item_ids), size=n_hold, replace=False)] = True
    return mask


def time_order(ts: np.ndarray, user: np.ndarray, item: np.ndarray) -> np.ndarray | None:
    """Permutation sorting events by (timestamp, user_id, item_id); None when already sorted.

    When the three ranges fit in 63 bits together (the usual case) they are packed into one
    int64 key: one argsort instead of ``np.lexsort``'s three passes (~10x faster on 10M events).
    """
    if len(ts) == 0:
        return None
    parts = [(a, int(a.min()), int(a.max())) for a in (ts, user, item)]
    bits = [max(1, (hi - lo).bit_length()) for _, lo, hi in parts]
    if sum(bits) > 63:
        return np.lexsort((item, user, ts))
    key = np.zeros(len(ts), dtype=np.int64)
    for (a, lo, _), b in zip(parts, bits):
        key = (key << b) | (a - lo)
    if (key[1:] >= key[:-1]).all():
        return None
    return np.argsort(key, kind="stable")


def row_of(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Row of each value in ``sorted_ids`` (every value must be present): lookup table when compact."""
    lo, hi = int(sorted_ids[0]), int(sorted_ids[-1])
    if hi - lo > max(4 * len(values), 1 << 24):
        return np.searchsorted(sorted_ids, values)
    table = np.zeros(hi - lo + 1, dtype=np.int64)
    table[sorted_ids - lo] = np.arange(len(sorted_ids))
    return table[values - lo]


def split_events(items: pd.DataFrame, events: pd.DataFrame, cfg: SplitConfig,
                 seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Assign ``split`` to events and the cold-start flags to items.

    ``items`` sorted by item_id (every event's item must be in it); ``events`` validated.
    Returns (items with holdout/cold/train_count/freq_bucket, events sorted by time with
    ``split``, info with the cutoffs).
    """
    check_split_config(cfg)
    order = time_order(events["timestamp"].to_numpy(), events["user_id"].to_numpy(), events["item_id"].to_numpy())
    events = events.reset_index(drop=True) if order is None else events.iloc[order].reset_index(drop=True)
    ts = events["timestamp"].to_numpy()
    n = len(ts)
    if n == 0:
        t_train = t_valid = 0
    else:
        t_train = int(ts[min(n - 1, int(np.floor(n * cfg.train_frac)))])
        t_valid = int(ts[min(n - 1, int(np.floor(n * (cfg.train_frac + cfg.valid_frac))))])
    item_ids = items["item_id"].to_numpy()
    holdout = draw_holdout(item_ids, cfg.holdout_item_frac, seed)
    pos = row_of(events["item_id"].to_numpy(), item_ids)  # row of each event's item
    held = holdout[pos]
    # Codes into SPLITS (train, valid, test, cold_test, cold_excluded): a categorical, not 10M+ strings.
    code = np.where(ts < t_train, 0, np.where(ts < t_valid, 1, 2)).astype(np.int8)
    code[held] = np.where(ts[held] >= t_valid, 3, 4)
    events["split"] = pd.Categorical.from_codes(code, categories=list(SPLITS))

    first_seen = np.full(len(item_ids), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen, pos, ts)
    train_count = np.bincount(pos[code == 0], minlength=len(item_ids)).astype(np.int64)
    items = items.copy()
    items["holdout"] = holdout
    items["cold"] = holdout | (first_seen >= t_train)
    items["train_count"] = train_count
    items["freq_bucket"] = freq_buckets(train_count, list(cfg.freq_bucket_edges))
    info = {"train_cutoff": t_train, "valid_cutoff": t_valid}
    return items, events, info
