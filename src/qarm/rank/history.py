"""Vectorised behaviour sequences: for every query event, the last ``n`` positives of its group
strictly before its timestamp. No Python loop over events: one sort, two ``searchsorted`` and a
strided gather.
"""

from __future__ import annotations

import numpy as np


def last_n_before(pos_group: np.ndarray, pos_time: np.ndarray, pos_value: np.ndarray,
                  query_group: np.ndarray, query_time: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The values of the last ``n`` positives of each query's group with time < the query's time.

    pos_group, pos_time, pos_value: int64 [P] (any order); query_group, query_time: int64 [Q];
    groups are non-negative integers (user index, or user x code for SIM).
    Returns (values int64 [Q, n], oldest first and right-aligned, 0 = padding; lengths int64 [Q]).
    ``pos_value`` must therefore be > 0 (0 is the padding value).
    """
    if n <= 0:
        return np.zeros((len(query_group), 0), np.int64), np.zeros(len(query_group), np.int64)
    pos_group = np.asarray(pos_group, np.int64)
    pos_time = np.asarray(pos_time, np.int64)
    query_group = np.asarray(query_group, np.int64)
    query_time = np.asarray(query_time, np.int64)
    if len(pos_time) == 0:
        return np.zeros((len(query_group), n), np.int64), np.zeros(len(query_group), np.int64)
    t_min = min(int(pos_time.min()), int(query_time.min()) if len(query_time) else 0)
    t_max = max(int(pos_time.max()), int(query_time.max()) if len(query_time) else 0)
    span = t_max - t_min + 1
    g_max = max(int(pos_group.max()), int(query_group.max()) if len(query_group) else 0)
    if (g_max + 1) * span >= 2 ** 62:
        raise OverflowError(f"(groups {g_max + 1}) x (time span {span}) does not fit one int64 sort key")
    order = np.lexsort((pos_time, pos_group))
    key = pos_group[order] * span + (pos_time[order] - t_min)  # sorted: group, then time
    value = np.asarray(pos_value, np.int64)[order]
    end = np.searchsorted(key, query_group * span + (query_time - t_min), side="left")  # first pos >= t
    start = np.searchsorted(key, query_group * span, side="left")                        # group start
    idx = end[:, None] - n + np.arange(n)[None, :]
    out = np.where(idx >= start[:, None], value[np.clip(idx, 0, None)], 0)
    return out, np.minimum(end - start, n)
