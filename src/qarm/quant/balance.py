"""Capacity-capped last-level assignment: sparse prices that spread colliding items (auction style).

Plain residual k-means gives items of one tight cluster the same full code: they share every level's
nearest centroid. Here each full code (prefix, last-level code) has a capacity of one item. For every
over-full code we raise a price ``lambda[prefix, code]`` (added to the squared distance) just enough that
only the item with the largest margin stays and the others move to their next-best last-level code;
rounds repeat until no code is over-full or the price cap is reached. The price cap ``max_price`` bounds
the extra squared error any item can pay, so the MSE cost is bounded by construction.

Prices are part of the model: ``transform`` adds them before the argmin, so the assignment is a fixed
function of the embedding (the same item always gets the same code, whatever else is in the batch).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from tqdm.auto import tqdm


def capacity_prices(chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int, n_codes: int,
                    candidates: int, budget: float, rounds: int, verbose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Prices of a capacity-capped last level from its per-item costs, chunk by chunk.

    ``chunks`` yields, for consecutive items (``n`` in all), (prefix int64 [b], cost float32
    [b, n_codes] of every last-level code, up to a per-row constant; best float [b]: the true
    squared error of each row's cheapest code). Each item keeps its ``candidates`` cheapest codes;
    the price cap is ``budget`` x the mean best error. Returns ``fit_prices``' (keys, values)."""
    m = min(candidates, n_codes)
    cand = np.empty((n, m), np.int32)
    cost = np.empty((n, m), np.float32)
    prefix = np.empty(n, np.int64)
    sq_err, s = 0.0, 0
    for pre, sc, best in chunks:
        b = len(sc)
        top = np.argpartition(sc, m - 1, axis=1)[:, :m] if m < sc.shape[1] else np.tile(np.arange(m), (b, 1))
        cand[s:s + b] = top
        cost[s:s + b] = np.take_along_axis(sc, top, 1)
        prefix[s:s + b] = pre
        sq_err += float(np.maximum(best, 0).sum())
        s += b
    return fit_prices(cand, cost, prefix, n_codes, budget * sq_err / max(n, 1), rounds, verbose=verbose)


def fit_prices(cand: np.ndarray, cost: np.ndarray, prefix: np.ndarray, n_codes: int, max_price: float,
               rounds: int, capacity: int = 1, verbose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Prices that cap the items per full code.

    cand int [n, m]: each item's m best last-level codes; cost float32 [n, m]: their squared distances (any
    per-row constant may be dropped); prefix int64 [n]: the item's code prefix as one mixed-radix integer.
    Returns (keys int64 [p] sorted, = prefix * n_codes + code; values float32 [p] > 0).
    """
    order = np.argsort(prefix, kind="stable")  # items of one prefix are contiguous: rounds touch only those
    prefix = prefix[order]
    keys = prefix[:, None] * n_codes + cand[order].astype(np.int64)
    cost = cost[order].astype(np.float32)
    pen = np.zeros_like(cost)
    tab_keys = np.empty(0, np.int64)
    tab_vals = np.empty(0, np.float32)
    active = np.arange(len(prefix))
    for _ in tqdm(range(rounds), desc="rq balance", disable=not verbose, leave=False):
        if active.size == 0:
            break
        tot = cost[active] + pen[active]
        pick = tot.argmin(axis=1)
        two = np.partition(tot, 1, axis=1)[:, :2] if tot.shape[1] > 1 else np.repeat(tot, 2, axis=1)
        gap = two[:, 1] - two[:, 0]  # extra price this item would tolerate before moving
        key = keys[active, pick]
        # sort by bucket, then by gap descending: within an over-full bucket the first `capacity` stay
        srt = np.lexsort((-gap, key))
        key_s, gap_s = key[srt], gap[srt]
        start = np.flatnonzero(np.r_[True, key_s[1:] != key_s[:-1]])
        count = np.diff(np.r_[start, len(key_s)])
        over = count > capacity
        if not over.any():
            break
        st = start[over]
        inc = 0.5 * (gap_s[st + capacity - 1] + gap_s[st + capacity])
        bucket = key_s[st]
        # merge increments into the price table, capped at max_price
        pos = np.minimum(np.searchsorted(tab_keys, bucket), max(len(tab_keys) - 1, 0))
        if len(tab_keys):
            found = tab_keys[pos] == bucket
            old = np.where(found, tab_vals[pos], 0).astype(np.float32)
        else:
            found, old = np.zeros(len(bucket), bool), np.zeros(len(bucket), np.float32)
        new = np.minimum(old + inc, max_price).astype(np.float32)
        changed = new > old * (1 + 1e-6) + 1e-12
        if not changed.any():
            break
        bucket, new, found, pos = bucket[changed], new[changed], found[changed], pos[changed]
        tab_vals[pos[found]] = new[found]
        if (~found).any():
            tab_keys = np.concatenate([tab_keys, bucket[~found]])
            tab_vals = np.concatenate([tab_vals, new[~found]])
            srt_tab = np.argsort(tab_keys)
            tab_keys, tab_vals = tab_keys[srt_tab], tab_vals[srt_tab]
        # only items whose prefix saw a price change can change their choice
        changed_prefix = np.unique(bucket // n_codes)
        lo = np.searchsorted(prefix, changed_prefix, "left")
        hi = np.searchsorted(prefix, changed_prefix, "right")
        active = _ranges(lo, hi)
        k = keys[active]
        p = np.minimum(np.searchsorted(tab_keys, k), len(tab_keys) - 1)
        pen[active] = np.where(tab_keys[p] == k, tab_vals[p], 0)
    return tab_keys, tab_vals


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenation of arange(lo[i], hi[i]) for all i, without a Python loop."""
    lens = hi - lo
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, np.int64)
    first = np.repeat(lo - np.cumsum(lens) + lens, lens)
    return first + np.arange(total)


def add_prices(scores: np.ndarray, prefix: np.ndarray, keys: np.ndarray, values: np.ndarray, n_codes: int) -> None:
    """In place: scores[i, c] += price[prefix[i], c] for the priced (prefix, code) pairs.

    scores float32 [n, n_codes]; prefix int64 [n]; keys int64 [p] sorted; values float32 [p].
    """
    if keys.size == 0:
        return
    lo = np.searchsorted(keys, prefix * n_codes, "left")
    hi = np.searchsorted(keys, (prefix + 1) * n_codes, "left")
    lens = hi - lo
    rows = np.flatnonzero(lens)
    if rows.size == 0:
        return
    row_idx = np.repeat(rows, lens[rows])
    entry = _ranges(lo[rows], hi[rows])
    scores[row_idx, (keys[entry] % n_codes)] += values[entry]
