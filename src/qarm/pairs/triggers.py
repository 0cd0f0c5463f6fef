"""Trigger mining: for every positive (user, target), the most similar earlier positive of that user.

The similarity lives in the U2I item-id space (cosine of the two-tower item embeddings): among the
user's latest ``window`` positives strictly before the target in time, the trigger is the item with
the highest cosine to the target, never the target itself. Events are sorted by (user, time) once;
an event's candidates are then one contiguous slice of that order, ``[max(user start, tie start -
window), tie start)`` where "tie start" is the first event of the user with the same timestamp
(so same-second events never see each other). Events are processed in batches of equal candidate
count, as one [batch, width] gather and one batched dot product: no Python loop over events.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm


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
    idx = hi[:, None] - width + np.arange(width)
    valid = idx >= lo[:, None]
    out = np.where(valid, values[np.where(valid, idx, 0)] if len(values) else pad, pad)
    return out.astype(values.dtype, copy=False)


def mine_triggers(user: np.ndarray, item: np.ndarray, time: np.ndarray, emb: np.ndarray, window: int = 50,
                  batch_elems: int = 1 << 22, progress: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Trigger of every positive event.

    user, item, time: int [n] positive events (item = row of ``emb``); emb: float32 [n_items, d],
    L2-normalised rows. ``batch_elems`` bounds one batch's gathered candidates (batch x width).
    Returns (trigger item int64 [m], target item int64 [m], cosine float32 [m], event int64 [m]:
    position in the input arrays), m <= n: an event with no earlier positive other than its own
    item has no trigger.
    """
    user, item, time = (np.asarray(a, dtype=np.int64) for a in (user, item, time))
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    order = sort_by_user_time(user, time)
    s_user, s_item, s_time = user[order], item[order], time[order]
    lo, hi = window_bounds(s_user, s_time, window)
    count = hi - lo
    by_count = np.argsort(count, kind="stable")  # batches of equal width waste no padding
    by_count = by_count[count[by_count] > 0]
    widths, first = np.unique(count[by_count], return_index=True)
    batches = []
    for width, ev_all in zip(widths, np.split(by_count, first[1:])):
        step = max(1, batch_elems // int(width))
        batches += [(int(width), ev_all[k:k + step]) for k in range(0, len(ev_all), step)]
    out_trigger, out_target, out_score, out_event = [], [], [], []
    bar = tqdm(total=len(by_count), desc="triggers", unit="event", disable=not progress, mininterval=2.0)
    for width, ev in batches:
        cand = padded_windows(s_item, lo[ev], hi[ev], width)               # [b, width], all valid
        target = s_item[ev]
        sims = np.einsum("bwd,bd->bw", emb[cand], emb[target])
        sims[cand == target[:, None]] = -np.inf                            # never the target itself
        best = np.argmax(sims, axis=1)
        best_sim = sims[np.arange(len(ev)), best]
        found = np.isfinite(best_sim)
        out_trigger.append(cand[found, best[found]])
        out_target.append(target[found])
        out_score.append(best_sim[found].astype(np.float32))
        out_event.append(order[ev[found]])
        bar.update(len(ev))
    bar.close()
    if not out_trigger:
        z = np.zeros(0, dtype=np.int64)
        return z, z, np.zeros(0, dtype=np.float32), z
    trig, targ, score, event = (np.concatenate(a) for a in (out_trigger, out_target, out_score, out_event))
    back = np.argsort(event, kind="stable")  # input order: deterministic and easy to join
    return trig[back], targ[back], score[back], event[back]


def mine_triggers_reference(user: np.ndarray, item: np.ndarray, time: np.ndarray, emb: np.ndarray,
                            window: int = 50, events: np.ndarray | None = None) -> dict[int, tuple[int, float]]:
    """The straightforward per-event loop (the benchmark's and tests' reference).

    Returns {event position: (trigger item, cosine)} for ``events`` (default all) that have a trigger.
    """
    history: dict[int, list[tuple[int, int]]] = {}
    order = np.lexsort((time, user))
    for p in order:
        history.setdefault(int(user[p]), []).append((int(time[p]), int(item[p])))
    wanted = range(len(user)) if events is None else events
    out = {}
    for p in wanted:
        t, target = int(time[p]), int(item[p])
        before = [it for (tt, it) in history[int(user[p])] if tt < t][-window:]
        best, best_sim = -1, -np.inf
        for it in before:
            if it == target:
                continue
            sim = float(emb[it] @ emb[target])
            if sim > best_sim:
                best, best_sim = it, sim
        if best >= 0:
            out[int(p)] = (best, best_sim)
    return out
