"""Per-user positive sequences in CSR form: the one history layout of the pairs stage.

Events are sorted by (user, time) once; ``items`` holds their item rows in that order and
``indptr`` the start of every user's run, so a user's history is a slice and an event's history
window is ``items[lo:hi]``. Offsets are int32 while they fit. Nothing ``[n, H]`` is ever held: a
batch's windows are materialised from the slices when the batch is built (``windows``), which keeps
memory O(events) instead of O(events x history).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qarm.lookup import IdIndex


def offset_dtype(n: int) -> type:
    """int32 when positions up to ``n`` fit in it, else int64."""
    return np.int32 if n < np.iinfo(np.int32).max else np.int64


def sort_by_user_time(user: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Stable order of events by (user, time). user, time: int [n]. Returns int64 [n]."""
    return np.lexsort((time, user)).astype(np.int64)


def window_bounds(user: np.ndarray, time: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate slice of every event, for events already sorted by (user, time).

    user, time: int [n] sorted. Returns (lo int64 [n], hi int64 [n]): the event's candidates are
    positions ``lo .. hi-1``: the user's latest ``window`` events with a timestamp strictly before it.
    """
    n = len(user)
    pos = np.arange(n, dtype=np.int64)
    new_user = np.r_[True, user[1:] != user[:-1]] if n else np.zeros(0, dtype=bool)
    new_time = new_user | (np.r_[True, time[1:] != time[:-1]] if n else new_user)
    user_start = np.maximum.accumulate(np.where(new_user, pos, 0)) if n else pos
    hi = np.maximum.accumulate(np.where(new_time, pos, 0)) if n else pos
    return np.maximum(user_start, hi - window), hi


def padded_windows(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, width: int,
                   pad: int = -1) -> np.ndarray:
    """values[lo:hi] of every row, right-aligned (latest last) in a [n, width] matrix.

    values: [N]; lo, hi: int [n] with hi - lo <= width. Returns values.dtype [n, width], ``pad`` where empty.
    """
    lo, hi = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
    idx = hi[:, None] - width + np.arange(width)
    valid = idx >= lo[:, None]
    out = np.where(valid, values[np.where(valid, idx, 0)] if len(values) else pad, pad)
    return out.astype(values.dtype, copy=False)


@dataclass
class Histories:
    """Positive events grouped per user, in time order (CSR).

    users: int64 [U] sorted raw user ids; indptr: int32/int64 [U + 1], user u's events are
    positions ``indptr[u] .. indptr[u+1]-1``; items: int32/int64 [n] item rows; times: int64 [n];
    order: int64 [n], input position of each sorted event; lo, hi: int32/int64 [n], the event's
    history window (the user's latest ``window`` positives strictly earlier in time).
    """

    users: np.ndarray
    indptr: np.ndarray
    items: np.ndarray
    times: np.ndarray
    order: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    window: int

    @classmethod
    def build(cls, user: np.ndarray, item: np.ndarray, time: np.ndarray, window: int) -> "Histories":
        """user, item, time: int [n] positive events in any order; window: history length."""
        user, item, time = (np.asarray(a, dtype=np.int64) for a in (user, item, time))
        n = len(user)
        order = sort_by_user_time(user, time)
        s_user, s_time = user[order], time[order]
        lo, hi = window_bounds(s_user, s_time, window)
        starts = np.flatnonzero(np.r_[True, s_user[1:] != s_user[:-1]]) if n else np.zeros(0, dtype=np.int64)
        off = offset_dtype(n)
        item_dtype = offset_dtype(int(item.max()) + 1 if n else 0)
        return cls(users=s_user[starts], indptr=np.r_[starts, n].astype(off), items=item[order].astype(item_dtype),
                   times=s_time, order=order, lo=lo.astype(off), hi=hi.astype(off), window=window)

    def __len__(self) -> int:
        return len(self.items)

    def windows(self, rows: np.ndarray, pad: int = -1, skip: np.ndarray | None = None) -> np.ndarray:
        """History windows of sorted events ``rows`` (int [b]) -> int64 [b, window], latest last.

        skip: optional int [b]; row k's window then ends ``skip[k]`` positives earlier (its latest
        ``skip[k]`` candidates are left out and older ones take their place)."""
        lo, hi = self.lo[rows].astype(np.int64), self.hi[rows].astype(np.int64)
        if skip is not None:
            start = self.indptr[np.searchsorted(self.indptr, rows, side="right") - 1].astype(np.int64)
            hi = np.maximum(start, hi - np.asarray(skip, dtype=np.int64))
            lo = np.maximum(start, hi - self.window)
        return padded_windows(self.items.astype(np.int64, copy=False), lo, hi, self.window, pad)

    def user_slices(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw user ids int [m] -> (start int64 [m], end int64 [m]) of their events; empty for unknown users."""
        pos, found = IdIndex(self.users, assume_sorted=True, name="user_id").find(user_ids)
        start = np.where(found, self.indptr[pos], 0).astype(np.int64)
        end = np.where(found, self.indptr[np.minimum(pos + 1, len(self.users))], 0).astype(np.int64)
        return start, end

    def latest(self, user_ids: np.ndarray, width: int | None = None, pad: int = -1) -> np.ndarray:
        """The latest ``width`` (default ``window``) positives of each user -> int64 [m, width], latest last."""
        start, end = self.user_slices(user_ids)
        width = self.window if width is None else width
        return padded_windows(self.items.astype(np.int64, copy=False), np.maximum(start, end - width), end, width, pad)

    def seen(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All positives of each user as CSR: (items int64 [total], indptr int64 [m + 1])."""
        start, end = self.user_slices(user_ids)
        lengths = end - start
        indptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        idx = np.repeat(start - indptr[:-1], lengths) + np.arange(indptr[-1])
        return self.items[idx].astype(np.int64), indptr
