"""Swing I2I: item-item similarity from "substitute" user pairs (Yang et al., 2020, arXiv 2010.05525).

For items i, j::

    swing(i, j) = sum over unordered user pairs {u, v} with u, v in U_i ∩ U_j of
                  w_u * w_v / (alpha + |I_u ∩ I_v|),      w_u = 1 / sqrt(|I_u|)

Two users who share few items but both clicked i and j are strong evidence that i and j belong
together; a pair of heavy users who overlap everywhere is weak evidence. ``w_u`` damps very active
users. Caps on the history length per user (latest ``max_user_history`` items) and on the users
per item (``max_item_users``, seeded sample) bound the work per event, so the cost is linear in
the number of events.

The fast path scores a chunk of anchor items at once. It stacks the histories of every anchor's
users into one sparse matrix whose CSC form lists, per item j, the users of each anchor a that
also clicked j (U_a ∩ U_j) as contiguous runs. Expanding every run into its user pairs (one
broadcast per run length) yields all (user pair, shared item) triples: a bincount over pair ids
gives |I_u ∩ I_v|, and summing pair weights per run gives swing(a, j). Work is proportional to the
triples, and no Python loop runs over users, events or items (see ``_score_anchor_chunk``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm


def rank_within_groups(groups: np.ndarray) -> np.ndarray:
    """0-based position of each element inside its run of equal values.

    groups: [n] sorted (equal values contiguous). Returns int64 [n].
    """
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    lengths = np.diff(np.r_[starts, n])
    return np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)


def gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for every (s, l), without a Python loop.

    starts, lengths: int [k]. Returns int64 [lengths.sum()].
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    offsets = np.repeat(np.asarray(starts, dtype=np.int64) - (ends - lengths), lengths)
    return np.arange(total, dtype=np.int64) + offsets


def cap_interactions(user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray | None = None,
                     max_user_history: int = 100, max_item_users: int = 200,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Deduplicate (user, item) and apply the Swing caps.

    user_ids, item_ids: int [n]; timestamps: int [n] or None (then input order is time order).
    Keeps each user's latest ``max_user_history`` distinct items, then for each item a seeded
    random sample of ``max_item_users`` of its users. Returns (user int64 [m], item int64 [m],
    number of repeated (user, item) rows dropped).
    """
    user = np.asarray(user_ids, dtype=np.int64)
    item = np.asarray(item_ids, dtype=np.int64)
    time = np.arange(len(user), dtype=np.int64) if timestamps is None else np.asarray(timestamps, dtype=np.int64)
    # latest first within each user; the first row of each (user, item) is its latest occurrence
    order = np.lexsort((-time, item, user))
    user, item, time = user[order], item[order], time[order]
    first = np.r_[True, (user[1:] != user[:-1]) | (item[1:] != item[:-1])][:len(user)]
    n_repeats = int((~first).sum())
    user, item, time = user[first], item[first], time[first]
    order = np.lexsort((-time, user))
    user, item = user[order], item[order]
    keep = rank_within_groups(user) < max_user_history
    user, item = user[keep], item[keep]
    # users per item: a seeded random subset, so no time period dominates the popular items
    key = np.random.default_rng(seed).random(len(user))
    order = np.lexsort((key, item))
    user, item = user[order], item[order]
    keep = rank_within_groups(item) < max_item_users
    return user[keep], item[keep], n_repeats


def interaction_matrix(user: np.ndarray, item: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Binary user x item CSR over the distinct ids present.

    Returns (X float64 [n_users, n_items], user ids int64 [n_users], item ids int64 [n_items]).
    """
    users, u = np.unique(user, return_inverse=True)
    items, i = np.unique(item, return_inverse=True)
    X = sp.csr_matrix((np.ones(len(u)), (u, i)), shape=(len(users), len(items)))
    X.sum_duplicates()
    X.data[:] = 1.0
    return X, users, items


class Swing:
    """Swing item-to-item similarity with top-N neighbours per item.

    Parameters: ``alpha`` smoothing of the user-pair overlap; ``max_user_history`` and
    ``max_item_users`` caps (see module doc); ``topn`` neighbours kept per item;
    ``chunk_budget`` non-zeros of the stacked user histories of one chunk of anchors, and
    ``pair_budget`` (user pair, shared item) triples of one chunk (a chunk over it is halved):
    the memory knobs; ``random_state`` seeds the users-per-item sample.

    Learned: ``items_`` int64 [n_items] item ids seen; ``neighbours_`` int64 [n_items, topn]
    neighbour item ids by decreasing score (-1 pad); ``scores_`` float32 [n_items, topn] (0 pad);
    ``n_repeats_`` repeated (user, item) rows dropped; ``n_edges_`` (user, item) edges after caps.
    """

    def __init__(self, alpha: float = 1.0, max_user_history: int = 100, max_item_users: int = 200,
                 topn: int = 20, chunk_budget: int = 4_000_000, pair_budget: int = 8_000_000, random_state: int = 0,
                 progress: bool = True) -> None:
        self.alpha = alpha
        self.max_user_history = max_user_history
        self.max_item_users = max_item_users
        self.topn = topn
        self.chunk_budget = chunk_budget
        self.pair_budget = pair_budget
        self.random_state = random_state
        self.progress = progress

    def fit(self, user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray | None = None) -> "Swing":
        """user_ids, item_ids: int [n] positive interactions; timestamps: int [n] or None."""
        user, item, self.n_repeats_ = cap_interactions(user_ids, item_ids, timestamps, self.max_user_history,
                                                       self.max_item_users, self.random_state)
        self.n_edges_ = len(user)
        X, _, self.items_ = interaction_matrix(user, item)
        n_items = len(self.items_)
        self.neighbours_ = np.full((n_items, self.topn), -1, dtype=np.int64)
        self.scores_ = np.zeros((n_items, self.topn), dtype=np.float32)
        if n_items == 0:
            return self
        weight = 1.0 / np.sqrt(np.diff(X.indptr).astype(np.float64))
        Xc = X.tocsc()
        # chunk anchors by the non-zeros of their users' histories (the size of the chunk matrix)
        csum = np.r_[0, np.cumsum(np.diff(X.indptr)[Xc.indices])]
        bounds = _chunk_bounds(csum[Xc.indptr[1:]] - csum[Xc.indptr[:-1]], self.chunk_budget)
        todo = [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])][::-1]
        bar = tqdm(total=n_items, desc="swing", unit="item", disable=not self.progress, mininterval=2.0)
        while todo:
            lo, hi = todo.pop()
            out = _score_anchor_chunk(X, Xc, weight, np.arange(lo, hi), self.alpha, self.pair_budget)
            if out is None:  # too many user-pair triples for memory: halve the chunk
                mid = (lo + hi) // 2
                todo += [(mid, hi), (lo, mid)]
                continue
            bar.update(hi - lo)
            anchor, nb, score = out
            keep = (nb != anchor) & (score > 0)
            anchor, nb, score = anchor[keep], nb[keep], score[keep]
            order = np.lexsort((nb, -score, anchor))  # ties broken by item index: deterministic
            anchor, nb, score = anchor[order], nb[order], score[order]
            rank = rank_within_groups(anchor)
            top = rank < self.topn
            self.neighbours_[anchor[top], rank[top]] = self.items_[nb[top]]
            self.scores_[anchor[top], rank[top]] = score[top]
        bar.close()
        return self

    def pairs(self, min_score: float = 0.0, mutual: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The "stable" neighbour pairs: score > ``min_score`` and, if ``mutual``, each in the other's top-N.

        Returns (item int64 [m], neighbour int64 [m], score float32 [m]), ordered pairs as found.
        """
        rows = np.repeat(self.items_, self.topn)
        nb = self.neighbours_.ravel()
        score = self.scores_.ravel()
        keep = (nb >= 0) & (score > min_score)
        rows, nb, score = rows[keep], nb[keep], score[keep]
        if mutual and len(rows):
            # (a, b) is mutual when (b, a) is also a kept pair: look it up by a joint key of positions
            n = len(self.items_)
            ra, rb = np.searchsorted(self.items_, rows), np.searchsorted(self.items_, nb)
            key, rev = ra * n + rb, rb * n + ra
            keep = np.isin(rev, key)
            rows, nb, score = rows[keep], nb[keep], score[keep]
        return rows, nb, score


def _chunk_bounds(cost: np.ndarray, budget: int) -> np.ndarray:
    """Cut [0, n) into consecutive chunks whose summed ``cost`` stays under ``budget`` (>= 1 item each)."""
    n = len(cost)
    csum = np.cumsum(np.asarray(cost, dtype=np.float64))
    bounds = [0]
    while bounds[-1] < n:
        start = bounds[-1]
        base = csum[start - 1] if start else 0.0
        end = int(np.searchsorted(csum, base + budget, side="right"))
        bounds.append(max(end, start + 1))
    return np.asarray(bounds, dtype=np.int64)


def _triangle_table(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs i < j of a group of size ``n``, in the order k = j * (j - 1) / 2 + i.

    The pairs of a smaller group of size s are the first s * (s - 1) / 2 rows of the table.
    Returns (i int64 [n * (n - 1) / 2], j int64 [same]).
    """
    j = np.repeat(np.arange(n, dtype=np.int64), np.arange(n))
    i = np.arange(len(j), dtype=np.int64) - j * (j - 1) // 2
    return i, j


def _score_anchor_chunk(X: sp.csr_matrix, Xc: sp.csc_matrix, weight: np.ndarray, anchors: np.ndarray,
                        alpha: float, pair_budget: int | None = None):
    """Swing scores of every (anchor, neighbour) for a chunk of anchor columns.

    Rows of the chunk's matrix B are (anchor, user) for every user of every anchor, each row that
    user's history. Within item j's column, the rows of one anchor a are contiguous: that run is
    U_a ∩ U_j. Every pair (u, v) inside the run is one (pair, shared item) triple; counting triples
    per pair gives |I_u ∩ I_v| (the anchor's own run lists every pair once), and summing the pair
    weights per run gives swing(a, j). Work and memory are O(triples) = O(sum over user pairs of
    |I_u ∩ I_v|): runs of equal length are expanded together by broadcasting, with no sort.

    Returns (anchor int64 [k], neighbour int64 [k], score float64 [k]) including anchor == neighbour,
    or None when the chunk has more than ``pair_budget`` triples (the caller splits it).
    """
    n_items = X.shape[1]
    sizes = np.diff(Xc.indptr)[anchors].astype(np.int64)
    users = Xc.indices[gather_ranges(Xc.indptr[anchors], sizes)]  # row r of B -> its user
    row_anchor = np.repeat(np.arange(len(anchors)), sizes)
    block_start = np.cumsum(sizes) - sizes
    n_pair_ids = sizes * (sizes - 1) // 2
    pair_base = np.cumsum(n_pair_ids) - n_pair_ids
    hist_len = np.diff(X.indptr)[users]
    hist = X.indices[gather_ranges(X.indptr[users], hist_len)]
    B = sp.csr_matrix((np.ones(len(hist), dtype=np.float32), hist, np.r_[0, np.cumsum(hist_len)]),
                      shape=(len(users), n_items))
    Bc = B.tocsc()  # a counting sort: per item, its rows in increasing order, so anchors are contiguous
    del B, hist
    run_rows = Bc.indices.astype(np.int64)
    run_item = np.repeat(np.arange(n_items), np.diff(Bc.indptr))
    run_anchor = row_anchor[run_rows]
    starts = np.flatnonzero(np.r_[True, (run_item[1:] != run_item[:-1]) | (run_anchor[1:] != run_anchor[:-1])])
    run_len = np.diff(np.r_[starts, len(run_rows)])
    keep = run_len >= 2  # a run of one user has no user pair
    starts, run_len = starts[keep], run_len[keep]
    run_triples = run_len * (run_len - 1) // 2
    if pair_budget is not None and len(anchors) > 1 and int(run_triples.sum()) > pair_budget:
        return None
    local = run_rows - block_start[run_anchor]  # row position inside its anchor's block
    run_base = pair_base[run_anchor[starts]]
    tab_i, tab_j = _triangle_table(int(run_len.max()) if len(run_len) else 2)
    tri = np.arange(len(tab_i) + 1, dtype=np.int64)
    tri = tri * (tri - 1) // 2
    # pass 1: the pair id of every triple, grouped by run length so each group is one broadcast
    by_len = np.argsort(run_len, kind="stable")
    lengths, group_start = np.unique(run_len[by_len], return_index=True)
    groups = np.split(by_len, group_start[1:])
    pair_ids = []
    for s, runs in zip(lengths, groups):
        t = int(s * (s - 1) // 2)
        at = starts[runs][:, None]
        lu, lv = local[at + tab_i[:t]], local[at + tab_j[:t]]
        pair_ids.append(run_base[runs][:, None] + tri[lv] + lu)
    overlap = np.bincount(np.concatenate([p.ravel() for p in pair_ids]), minlength=int(n_pair_ids.sum()))
    # pair weights over the pair-id space (smaller than the triples)
    pid_anchor = np.repeat(np.arange(len(anchors)), n_pair_ids)
    k = np.arange(len(overlap), dtype=np.int64) - pair_base[pid_anchor]
    row_w = weight[users]
    base = block_start[pid_anchor]
    pair_w = row_w[base + tab_i[k]] * row_w[base + tab_j[k]] / (alpha + overlap)
    del pid_anchor, k, base, overlap
    # pass 2: swing(a, j) = sum of the pair weights of run (a, j)
    score = np.empty(len(starts))
    for runs, pid in zip(groups, pair_ids):
        score[runs] = pair_w[pid].sum(axis=1)
    return anchors[run_anchor[starts]], run_item[starts], score


def swing_reference(user: np.ndarray, item: np.ndarray, alpha: float = 1.0) -> tuple[sp.csr_matrix, np.ndarray]:
    """Straightforward Swing: the reference the benchmark and tests compare the fast path with.

    user, item: int [n] edges (already capped; duplicates ignored). Builds the whole user x user
    overlap ``X @ X.T`` and its pair weights up front, then loops over items in Python and sums the
    weights of the user pairs under each item's users. Returns (scores float64 [n_items, n_items]
    CSR over ``items``, with a zero diagonal; items int64 [n_items]).
    """
    X, _, items = interaction_matrix(user, item)
    weight = 1.0 / np.sqrt(np.asarray(X.sum(axis=1)).ravel())
    K = (X @ X.T).tocoo()
    off = K.row != K.col
    W = sp.csr_matrix((weight[K.row[off]] * weight[K.col[off]] / (alpha + K.data[off]), (K.row[off], K.col[off])),
                      shape=K.shape)
    Xc = X.tocsc()
    out_rows, out_cols, out_vals = [], [], []
    for i in range(X.shape[1]):
        users = Xc.indices[Xc.indptr[i]:Xc.indptr[i + 1]]
        Xs = X[users]
        s = np.asarray(Xs.multiply(W[users][:, users] @ Xs).sum(axis=0)).ravel() * 0.5
        s[i] = 0.0
        nz = np.flatnonzero(s)
        out_rows.append(np.full(len(nz), i))
        out_cols.append(nz)
        out_vals.append(s[nz])
    S = sp.csr_matrix((np.concatenate(out_vals), (np.concatenate(out_rows), np.concatenate(out_cols))),
                      shape=(X.shape[1], X.shape[1]))
    return S, items
