"""Features described as data (torchrec-style ``FeatureSpec``s) and their vectorised construction.

Everything the ranker reads is precomputed once as integer / float arrays:

- item tables, one row per item (row 0 = padding, row 1 = an item unknown to the run, row ``r + 2``
  = row ``r`` of items.parquet): the item id index (out-of-vocabulary bucket for items without train
  events, held-out cold items included), VQ code bag, RQ code per level and per prefix, frozen dense
  embeddings;
- event arrays: user index, target row, history rows (last N positives before the event), SIM rows
  (last positives sharing the target's level-1 RQ code), bucketised code-match counts, labels.

Code indices that no training item uses map to the OOV index 1 too: an embedding that never
received a gradient carries no information, the shared OOV row at least learns "unseen".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from qarm.errors import ConfigError, DataError
from qarm.rank.history import last_n_before

PAD, UNKNOWN = 0, 1          # item rows; also the padding / OOV index of every vocabulary
VARIANTS = ("id", "frozen_mm", "ia_rep", "vq", "rq", "qarm")
HISTORY_SPLITS = ("train", "valid", "test")        # non-held-out events: history sources
EVENT_SPLITS = ("train", "valid", "test", "cold_test")
COUNT_EDGES = np.array([0, 1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500], dtype=np.int64)  # bucket lower edges


@dataclass(frozen=True)
class FeatureSpec:
    """One model input. ``kind``: ``user`` (per event id), ``item`` (per item, looked up through the
    item table, ``width`` ids pooled by ``pooling``), ``count`` (per event bucket id), ``dense``
    (frozen per-item float vector of size ``vocab``, projected to ``dim``), ``sequence`` (per event
    item rows attended by its own DIN unit)."""

    name: str
    kind: Literal["user", "item", "count", "dense", "sequence"]
    vocab: int
    dim: int
    pooling: Literal["none", "mean", "sum"] = "none"
    width: int = 1


def _compact(keys: np.ndarray, trained: np.ndarray) -> tuple[np.ndarray, int]:
    """Map integer keys [n] or [n, w] to 2.. (keys used by a ``trained`` row) or UNKNOWN.

    Returns (index int64 like ``keys``, vocabulary size including PAD and UNKNOWN).
    """
    used = np.unique(keys[trained])
    pos = np.searchsorted(used, keys).clip(0, max(len(used) - 1, 0))
    hit = (used[pos] == keys) if len(used) else np.zeros(keys.shape, bool)
    return np.where(hit, pos + 2, UNKNOWN).astype(np.int64), len(used) + 2


def _padded(rows: np.ndarray, fill: float = PAD) -> np.ndarray:
    """Prepend the PAD and UNKNOWN rows to a per-item array."""
    pad = np.full((2,) + rows.shape[1:], fill, dtype=rows.dtype)
    return np.concatenate([pad, rows])


@dataclass
class ItemTables:
    """Per-item arrays, row = ``items.parquet`` row + 2 (see module docstring).

    index: name -> int64 [R, width] vocabulary indices (width 1 for single-valued features); dense: name -> float32 [R, d];
    vocab: name -> vocabulary size; prefix: int64 [R, L] enumerated RQ prefix of depth 1..L
    (raw, -1 for PAD/UNKNOWN); vq: csr [R, pool] raw VQ code indicator.
    """

    item_ids: np.ndarray
    index: dict[str, np.ndarray] = field(default_factory=dict)
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    vocab: dict[str, int] = field(default_factory=dict)
    prefix: np.ndarray | None = None
    vq: sp.csr_matrix | None = None

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Item ids int64 [n] -> item rows int64 [n] (UNKNOWN for ids outside the catalogue)."""
        item_ids = np.asarray(item_ids, np.int64)
        pos = np.searchsorted(self.item_ids, item_ids).clip(0, max(len(self.item_ids) - 1, 0))
        ok = self.item_ids[pos] == item_ids if len(self.item_ids) else np.zeros(len(item_ids), bool)
        return np.where(ok, pos + 2, UNKNOWN).astype(np.int64)

    @property
    def n_rows(self) -> int:
        return len(self.item_ids) + 2


def build_item_tables(items: pd.DataFrame, codes: pd.DataFrame | None, dense: dict[str, np.ndarray]) -> ItemTables:
    """Item tables from items.parquet, codes.parquet and the dense embeddings (items order).

    items: sorted by item_id, with ``train_count``; codes: ``item_id``, ``vq`` list [K], ``rq`` list [L];
    dense: file name -> float32 [n_items, d]. Raises DataError on NaN/inf, wrong shapes, missing codes.
    """
    item_ids = items["item_id"].to_numpy(np.int64)
    n = len(item_ids)
    trained = _padded(items["train_count"].to_numpy(np.int64) > 0, False)
    t = ItemTables(item_ids=item_ids)
    ids = _padded(np.arange(n, dtype=np.int64), -1)[:, None]
    t.index["item_id"], t.vocab["item_id"] = _compact(ids, trained[:, None])
    t.index["item_id"][0] = PAD  # row 1 (unknown item) is already UNKNOWN
    for name, emb in dense.items():
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.shape[0] != n:
            raise DataError(f"expected float32 [{n}, d] (one row per items.parquet row), got shape {emb.shape}", file=name)
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataError(f"{int(bad.sum())} row(s) hold NaN or inf, first item_id {int(item_ids[r])}; "
                            f"dense embeddings must be finite (rerun the align stage)", file=name, row=r)
        t.dense[name] = _padded(emb.astype(np.float32), 0.0)
        t.vocab[name] = emb.shape[1]
    if codes is not None:
        _add_codes(t, items, codes, trained)
    return t


def _add_codes(t: ItemTables, items: pd.DataFrame, codes: pd.DataFrame, trained: np.ndarray) -> None:
    n = len(t.item_ids)
    codes = codes.sort_values("item_id")
    cid = codes["item_id"].to_numpy(np.int64)
    if len(cid) != n or not np.array_equal(cid, t.item_ids):
        missing = np.setdiff1d(t.item_ids, cid)
        raise DataError(f"codes must cover every item of items.parquet exactly once; {len(missing)} item(s) "
                        f"missing (first: {missing[:5].tolist()}), {len(cid)} rows for {n} items",
                        file="codes.parquet", column="item_id")
    vq, rq = (_code_matrix(codes[c], c) for c in ("vq", "rq"))
    # VQ bag: one vocabulary over pool positions, mean-pooled
    vq_all = _padded(vq, -1)
    t.index["vq"], t.vocab["vq"] = _compact(vq_all, trained)
    t.index["vq"][0] = PAD
    pool = int(vq.max()) + 1 if vq.size else 1
    r = np.repeat(np.arange(n) + 2, vq.shape[1])
    t.vq = sp.csr_matrix((np.ones(r.size, np.float32), (r, vq.ravel())), shape=(n + 2, pool))
    # RQ: each level and each prefix (1, 1-2, 1-2-3, ...) enumerated over the catalogue
    prefix = np.empty((n, rq.shape[1]), np.int64)
    for d in range(rq.shape[1]):
        _, prefix[:, d] = np.unique(rq[:, : d + 1], axis=0, return_inverse=True)
    t.prefix = _padded(prefix, -1)
    for d in range(rq.shape[1]):
        for name, keys in ((f"rq_l{d + 1}", rq[:, d]), (f"rq_p{d + 1}", prefix[:, d])):
            if name == "rq_p1":
                continue  # the depth-1 prefix is the level-1 code
            t.index[name], t.vocab[name] = _compact(_padded(keys, -1)[:, None], trained[:, None])
            t.index[name][0] = PAD


def _code_matrix(col: pd.Series, name: str) -> np.ndarray:
    lens = col.map(len).to_numpy()
    if len(lens) and (lens != lens[0]).any():
        r = int(np.flatnonzero(lens != lens[0])[0])
        raise DataError(f"every row needs the same number of codes ({lens[0]}), got {lens[r]}",
                        file="codes.parquet", row=r, column=name)
    m = np.stack(col.to_numpy()).astype(np.int64) if len(col) else np.zeros((0, 1), np.int64)
    if (m < 0).any():
        r = int(np.flatnonzero((m < 0).any(axis=1))[0])
        raise DataError("codes must be non-negative", file="codes.parquet", row=r, column=name)
    return m


def variant_specs(variant: str, t: ItemTables, n_users: int, history: int, sim_history: int,
                  dim: int, code_dim: int, count_dim: int) -> list[FeatureSpec]:
    """The features of one ablation variant, built from the run's item tables."""
    if variant not in VARIANTS:
        raise ConfigError(f"rank.variants: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    specs = [FeatureSpec("user_id", "user", n_users, dim), FeatureSpec("item_id", "item", t.vocab["item_id"], dim),
             FeatureSpec("history", "sequence", history, 0)]
    dense = {"frozen_mm": "emb_raw.npy", "ia_rep": "emb_aligned.npy"}.get(variant)
    if dense:
        if dense not in t.dense:
            raise DataError(f"variant {variant!r} needs {dense}: run the 'align' stage", file=dense)
        specs.append(FeatureSpec(dense, "dense", t.vocab[dense], dim))
    if variant in ("vq", "rq", "qarm") and t.prefix is None:
        raise DataError(f"variant {variant!r} needs codes: run the 'quantize' stage", file="codes.parquet")
    n_buckets = len(COUNT_EDGES)
    if variant in ("vq", "qarm"):
        specs.append(FeatureSpec("vq", "item", t.vocab["vq"], dim, "mean", t.index["vq"].shape[1]))
        specs += [FeatureSpec(c, "count", n_buckets, count_dim) for c in ("vq_overlap_items", "vq_overlap_codes")]
    if variant in ("rq", "qarm"):
        depth = t.prefix.shape[1]
        specs += [FeatureSpec(f"rq_l{d}", "item", t.vocab[f"rq_l{d}"], code_dim) for d in range(1, depth + 1)]
        specs += [FeatureSpec(f"rq_p{d}", "item", t.vocab[f"rq_p{d}"], code_dim) for d in range(2, depth + 1)]
        specs += [FeatureSpec(f"rq_match_{d}", "count", n_buckets, count_dim) for d in range(1, depth + 1)]
        specs.append(FeatureSpec("sim", "sequence", sim_history, 0))
    return specs


def bucketize(counts: np.ndarray) -> np.ndarray:
    """Counts int [..] -> bucket ids int64 [..] in [0, len(COUNT_EDGES))."""
    return (np.searchsorted(COUNT_EDGES, counts, side="right") - 1).astype(np.int64)


def match_counts(t: ItemTables, target: np.ndarray, hist: np.ndarray, chunk: int = 1 << 24) -> dict[str, np.ndarray]:
    """Code-match counts between each target and its history (raw counts, int64 [Q] each).

    target: int64 [Q] item rows; hist: int64 [Q, N] item rows (PAD = 0).
    ``rq_match_d``: history items sharing the target's RQ prefix of depth d;
    ``vq_overlap_items``: history items whose VQ code set meets the target's;
    ``vq_overlap_codes``: codes shared, summed over the history.
    """
    out: dict[str, np.ndarray] = {}
    if t.prefix is None:
        return out
    valid = hist > PAD
    for d in range(t.prefix.shape[1]):
        p = t.prefix[:, d]
        out[f"rq_match_{d + 1}"] = ((p[hist] == p[target][:, None]) & valid & (p[target][:, None] >= 0)).sum(1)
    items, codes = np.zeros(len(target), np.int64), np.zeros(len(target), np.int64)
    shared_all = (t.vq @ t.vq.T).tocsr()  # [R, R] codes shared by two items (sparse)
    step = max(1, chunk // max(t.n_rows, 1))  # rows of the dense [step, R] block
    for s in range(0, len(target), step):
        shared = shared_all[target[s:s + step]].toarray()
        h = np.take_along_axis(shared, hist[s:s + step], axis=1) * valid[s:s + step]
        items[s:s + step] = (h > 0).sum(1)
        codes[s:s + step] = h.sum(1).astype(np.int64)
    out["vq_overlap_items"], out["vq_overlap_codes"] = items, codes
    return out


@dataclass
class EventArrays:
    """Per-event model inputs for one set of events (all int64 unless noted).

    user: [E] user index (UNKNOWN for users without train events); target: [E] item rows;
    history: [E, N]; sim: [E, S] item rows; counts: name -> [E] bucket ids; labels: float32 [E, T];
    split: object [E]; user_id: [E] raw ids (GAUC groups); n_empty_history: events with no history.
    """

    user: np.ndarray
    target: np.ndarray
    history: np.ndarray
    sim: np.ndarray
    counts: dict[str, np.ndarray]
    labels: np.ndarray
    split: np.ndarray
    user_id: np.ndarray

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, mask: np.ndarray) -> EventArrays:
        return EventArrays(self.user[mask], self.target[mask], self.history[mask], self.sim[mask],
                           {k: v[mask] for k, v in self.counts.items()}, self.labels[mask], self.split[mask],
                           self.user_id[mask])


def check_labels(events: pd.DataFrame, tasks: list[str], history_label: str) -> None:
    """Every task column (and the history label) exists and holds only 0/1, else DataError
    naming the row (``events``' index: the row of events.parquet) and the column."""
    for col in dict.fromkeys([*tasks, history_label]):
        if col not in events.columns:
            raise DataError(f"label column {col!r} (rank.tasks / rank.history_label) not in events; columns: "
                            f"{', '.join(events.columns)}", file="events.parquet", column=col)
        v = pd.to_numeric(events[col], errors="coerce").to_numpy(np.float64)
        bad = ~np.isin(v, (0.0, 1.0))
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            value = events[col].iloc[r]
            raise DataError(f"labels must be 0 or 1; {int(bad.sum())} row(s) are not, first value "
                            f"{value.item() if hasattr(value, 'item') else value!r}",
                            file="events.parquet", row=int(events.index[r]), column=col)


def build_events(t: ItemTables, events: pd.DataFrame, tasks: list[str], history_label: str,
                 history: int, sim_history: int) -> tuple[EventArrays, dict[str, int]]:
    """Event arrays for the train/valid/test/cold_test events of events.parquet.

    History sources: ``train``/``valid``/``test`` events with ``history_label == 1``, strictly
    earlier than the event. Returns (arrays, counts of what was set aside or found).
    """
    if "split" not in events.columns:
        raise DataError("no 'split' column: run the 'prepare' stage", file="events.parquet", column="split")
    keep = events["split"].isin(EVENT_SPLITS).to_numpy()
    check_labels(events.loc[keep], tasks, history_label)
    ev = events.loc[keep]
    split = ev["split"].to_numpy(object)
    users = ev["user_id"].to_numpy(np.int64)
    ts = ev["timestamp"].to_numpy(np.int64)
    target = t.rows(ev["item_id"].to_numpy(np.int64))
    n_unknown_items = int((target == UNKNOWN).sum())
    # user index: users with train events get their own embedding, the others share UNKNOWN
    user_vocab = np.unique(users[split == "train"])
    pos = np.searchsorted(user_vocab, users).clip(0, max(len(user_vocab) - 1, 0))
    user = np.where(user_vocab[pos] == users, pos + 2, UNKNOWN) if len(user_vocab) else np.full(len(users), UNKNOWN)
    group = np.unique(users, return_inverse=True)[1].astype(np.int64)

    is_pos = np.isin(split, HISTORY_SPLITS) & (ev[history_label].to_numpy() == 1) & (target > UNKNOWN)
    hist, hist_len = last_n_before(group[is_pos], ts[is_pos], target[is_pos], group, ts, history)
    sim = np.zeros((len(ev), sim_history), np.int64)
    counts: dict[str, np.ndarray] = {}
    if t.prefix is not None:
        l1 = t.prefix[:, 0]  # raw level-1 code per item row, -1 for PAD/UNKNOWN
        n_l1 = int(l1.max()) + 2
        sim, _ = last_n_before(group[is_pos] * n_l1 + l1[target[is_pos]] + 1, ts[is_pos], target[is_pos],
                               group * n_l1 + l1[target] + 1, ts, sim_history)
        counts = {k: bucketize(v) for k, v in match_counts(t, target, hist).items()}
    labels = ev[tasks].to_numpy(np.float32)
    info = {"n_events": len(ev), "n_unknown_items": n_unknown_items,
            "n_empty_history": int((hist_len == 0).sum()),
            "n_users_oov": int((user == UNKNOWN).sum())}
    info.update({f"n_{s}": int((split == s).sum()) for s in EVENT_SPLITS})
    return EventArrays(user.astype(np.int64), target, hist, sim, counts, labels, split, users), info
