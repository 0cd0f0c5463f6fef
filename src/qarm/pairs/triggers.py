"""Trigger mining: for every positive (user, target), the most similar earlier positive of that user.

The similarity lives in the U2I item-id space (cosine of the two-tower item embeddings): among the
user's latest ``window`` positives strictly before the target in time, the trigger is the item with
the highest cosine to the target, never the target itself. Events are sorted by (user, time) once;
an event's candidates are then one contiguous slice of that order, ``[max(user start, tie start -
window), tie start)`` where "tie start" is the first event of the user with the same timestamp
(so same-second events never see each other). Similarities come from one batched GEMM per chunk
of events over strided views (see ``mine_triggers``): no Python loop over events.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view
from tqdm.auto import tqdm

# the history helpers live with the CSR histories; re-exported here, where callers have found them
from qarm.pairs.history import Histories, padded_windows, sort_by_user_time, window_bounds  # noqa: F401


def mine_triggers(user: np.ndarray, item: np.ndarray, time: np.ndarray, emb: np.ndarray, window: int = 50,
                  block: int = 64, chunk: int = 1 << 16, progress: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Trigger of every positive event.

    user, item, time: int [n] positive events (item = row of ``emb``); emb: float32 [n_items, d],
    L2-normalised rows. Returns (trigger item int64 [m], target item int64 [m], cosine float32 [m],
    event int64 [m]: position in the input arrays, ascending), m <= n: an event with no earlier
    positive other than its own item has no trigger.

    In (user, time) order the candidates of event p lie among the ``window`` (plus same-second ties)
    positions before p, so the similarities needed are a band of the Gram matrix of the sorted event embeddings. Each block of
    ``block`` events is multiplied with its ``block + window`` preceding-and-own rows (one batched
    GEMM per ``chunk`` events over a zero-copy strided view), and the band is read off with
    another strided view: every event's embedding is gathered once, not ``window`` times.
    """
    user, item, time = (np.asarray(a, dtype=np.int64) for a in (user, item, time))
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = len(user), emb.shape[1]
    hist = Histories.build(user, item, time, window)   # the CSR layout: candidates are hist.lo .. hist.hi-1
    order, s_item = hist.order, hist.items.astype(np.int64)
    lo, hi = hist.lo.astype(np.int64), hist.hi.astype(np.int64)
    # same-second events sit between an event and its window: the band widens by that many rows
    reach = window + (np.arange(n) - hi)
    w_max = int(reach.max()) if n else window
    padded_items = np.r_[np.full(w_max, -1, dtype=np.int64), s_item]
    out_trigger, out_target, out_score, out_event = [], [], [], []
    bar = tqdm(total=n, desc="triggers", unit="event", disable=not progress, mininterval=2.0)
    start = 0
    while start < n:
        end = min(n, start + chunk)
        w = int(reach[start:end].max())
        if w > window:  # long same-second runs: fewer events per chunk keeps the Gram band's memory bounded
            end = min(end, start + max(block, chunk * window // w))
            w = int(reach[start:end].max())
        m, n_blocks = end - start, -(-(end - start) // block)
        # float64 rows, scores rounded to float32 after: BLAS rounds a row by its position in the block
        # (OpenBLAS on AMD Zen), and a chunk's rows sit elsewhere in another engine's chunking (Spark
        # partitions); float64 then float32 gives the same scores, so the same triggers, either way
        rows = np.zeros((w + n_blocks * block, d), dtype=np.float64)  # w halo rows, then this chunk's events
        first = max(0, start - w)
        rows[w - (start - first): w + m] = emb[s_item[first:end]]
        rs, cs = rows.strides
        queries = rows[w:].reshape(n_blocks, block, d)
        keys = as_strided(rows, (n_blocks, block + w, d), (block * rs, rs, cs))   # rows p-w .. p+block-1
        gram = np.matmul(queries, keys.transpose(0, 2, 1))                          # [blocks, block, block+w]
        g0, g1, g2 = gram.strides
        band = as_strided(gram, (n_blocks, block, w), (g0, g1 + g2, g2)).reshape(-1, w)[:m]  # [m, w]: p . (p-w+j)
        pos = np.arange(start, end)[:, None] - w + np.arange(w)
        target = s_item[start:end]
        cand = sliding_window_view(padded_items, w)[start + w_max - w:end + w_max - w]  # items at p-w .. p-1
        ok = (pos >= lo[start:end, None]) & (pos < hi[start:end, None]) & (cand != target[:, None])
        sims = np.where(ok, band.astype(np.float32), np.float32(-np.inf))
        best = sims.argmax(axis=1)
        best_sim = sims[np.arange(m), best]
        found = np.isfinite(best_sim)
        out_trigger.append(cand[found, best[found]])
        out_target.append(target[found])
        out_score.append(best_sim[found].astype(np.float32))
        out_event.append(order[start:end][found])
        bar.update(end - start)
        start = end
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
