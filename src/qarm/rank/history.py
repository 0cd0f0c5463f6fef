"""Vectorised behaviour sequences, stored CSR-style and materialised per batch.

For every query event the history is "the last ``n`` positives of its group strictly before its
timestamp". Instead of a dense [E, n] matrix, the positives are sorted once by (group, time) into
one ``values`` array; each event keeps two offsets into it (``start`` = its group's first positive,
``end`` = its first positive at or after the event's time). A batch's [B, n] history is then one
strided gather: ``values[end - n .. end)``, masked below ``start``. No Python loop over events:
one sort and two ``searchsorted``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _index_dtype(n: int) -> type:
    """int32 where every value fits (item rows, offsets), int64 beyond."""
    return np.int32 if n < 2 ** 31 - 1 else np.int64


@dataclass
class Sequences:
    """Per-event offsets into one sorted positives array.

    values: int32 (int64 past 2^31 rows) [P] positive item rows, sorted by (group, time), all > 0;
    start, end: int32/int64 [Q] per query event, ``values[start:end]`` = its group's positives
    strictly before its time (oldest first).
    """

    values: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    def lengths(self, n: int | None = None) -> np.ndarray:
        """int64 [Q] positives before each event (capped at ``n`` when given)."""
        length = self.end.astype(np.int64) - self.start
        return length if n is None else np.minimum(length, n)

    def subset(self, mask: np.ndarray) -> Sequences:
        """The same positives, the offsets of the selected events only (``values`` is shared)."""
        return Sequences(self.values, self.start[mask], self.end[mask])

    def materialise(self, n: int, sel: np.ndarray | slice | None = None) -> np.ndarray:
        """int64 [Q', n]: the last ``n`` positives of the selected events, oldest first and
        right-aligned, 0 = padding."""
        start = self.start if sel is None else self.start[sel]
        end = self.end if sel is None else self.end[sel]
        if n <= 0:
            return np.zeros((len(start), 0), np.int64)
        if not len(self.values):
            return np.zeros((len(start), n), np.int64)
        idx = end.astype(np.int64)[:, None] - n + np.arange(n)[None, :]
        return np.where(idx >= start[:, None], self.values[np.clip(idx, 0, None)], 0).astype(np.int64)


def sequences_before(pos_group: np.ndarray, pos_time: np.ndarray, pos_value: np.ndarray,
                     query_group: np.ndarray, query_time: np.ndarray) -> Sequences:
    """Index the positives for "positives of the query's group with time < the query's time".

    pos_group, pos_time, pos_value: int [P] (any order; values > 0, 0 is the padding value);
    query_group, query_time: int [Q]; groups are non-negative integers (user index, or user x code
    for SIM). Ties in time are broken by input order (a stable sort).
    """
    pos_group = np.asarray(pos_group, np.int64)
    pos_time = np.asarray(pos_time, np.int64)
    query_group = np.asarray(query_group, np.int64)
    query_time = np.asarray(query_time, np.int64)
    value_dtype = _index_dtype(int(np.max(pos_value, initial=0)) + 1)
    if len(pos_time) == 0:
        z = np.zeros(len(query_group), _index_dtype(0))
        return Sequences(np.zeros(0, value_dtype), z, z.copy())
    t_min = min(int(pos_time.min()), int(query_time.min()) if len(query_time) else 0)
    t_max = max(int(pos_time.max()), int(query_time.max()) if len(query_time) else 0)
    span = t_max - t_min + 1
    g_max = max(int(pos_group.max()), int(query_group.max()) if len(query_group) else 0)
    if (g_max + 1) * span >= 2 ** 62:
        raise OverflowError(f"(groups {g_max + 1}) x (time span {span}) does not fit one int64 sort key")
    order = np.lexsort((pos_time, pos_group))
    key = pos_group[order] * span + (pos_time[order] - t_min)  # sorted: group, then time
    value = np.asarray(pos_value)[order].astype(value_dtype)
    off = _index_dtype(len(key) + 1)
    end = np.searchsorted(key, query_group * span + (query_time - t_min), side="left").astype(off)  # first >= t
    start = np.searchsorted(key, query_group * span, side="left").astype(off)                        # group start
    return Sequences(value, start, end)


def last_n_before(pos_group: np.ndarray, pos_time: np.ndarray, pos_value: np.ndarray,
                  query_group: np.ndarray, query_time: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The values of the last ``n`` positives of each query's group with time < the query's time.

    Arguments as ``sequences_before``. Returns (values int64 [Q, n], oldest first and
    right-aligned, 0 = padding; lengths int64 [Q]).
    """
    if n <= 0:
        return np.zeros((len(query_group), 0), np.int64), np.zeros(len(query_group), np.int64)
    seq = sequences_before(pos_group, pos_time, pos_value, query_group, query_time)
    return seq.materialise(n), seq.lengths(n)
