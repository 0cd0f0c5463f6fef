"""Features described as data (torchrec-style ``FeatureSpec``s) and their vectorised construction.

Everything the ranker reads is precomputed once as integer / float arrays:

- item tables, one row per item (row 0 = padding, row 1 = an item unknown to the run, row ``r + 2``
  = row ``r`` of items.parquet): the item id index (out-of-vocabulary bucket for items without train
  events, held-out cold items included), VQ code bag, RQ code per level and per prefix, frozen dense
  embeddings, each dense embedding's SIM cluster (nearest k-means centroid, fitted on train items)
  and the raw codes the per-event match counts compare;
- event arrays: user index, target row, history and SIM sequences as CSR-style offsets into one
  sorted positives array (``qarm.rank.history.Sequences``, materialised per batch), bucketised
  match counts (code matches, or for dense embeddings cosine-similarity matches), labels.

Code indices that no training item uses map to the OOV index 1 too: an embedding that never
received a gradient carries no information, the shared OOV row at least learns "unseen". New items
(``ItemTables.append``, used by serving) go through the same compaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from qarm.errors import ConfigError, DataError
from qarm.lookup import IdIndex
from qarm.rank.history import Sequences, sequences_before

PAD, UNKNOWN = 0, 1          # item rows; also the padding / OOV index of every vocabulary
VARIANTS = ("id", "frozen_mm", "ia_rep", "vq", "rq", "qarm", "qarm_dense", "qarm_raw")
# qarm_raw: the codes added to a ranker that already has the cached raw vector (the paper's
# production baseline plus its codes); qarm_dense: the codes beside the aligned vector
DENSE_OF = {"frozen_mm": "emb_raw.npy", "ia_rep": "emb_aligned.npy", "qarm_dense": "emb_aligned.npy",
            "qarm_raw": "emb_raw.npy"}
VQ_VARIANTS, RQ_VARIANTS = ("vq", "qarm", "qarm_dense", "qarm_raw"), ("rq", "qarm", "qarm_dense", "qarm_raw")
CODE_VARIANTS = ("vq", "rq", "qarm", "qarm_dense", "qarm_raw")
VQ_TABLES = ("own", "item_id")   # rank.vq_table: where the VQ bag's codes are embedded
HISTORY_SPLITS = ("train", "valid", "test")        # non-held-out events: history sources
EVENT_SPLITS = ("train", "valid", "test", "cold_test")
COUNT_EDGES = np.array([0, 1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500], dtype=np.int64)  # bucket lower edges
# cosine thresholds of the dense match counts: these quantiles of the cosine between two train
# items, coarse to fine, the dense analogue of sharing an RQ prefix of depth 1, 2, 3
COS_QUANTILES = (0.9, 0.99, 0.999)


def dense_tag(name: str) -> str:
    """``emb_raw.npy`` -> ``raw``, ``emb_aligned.npy`` -> ``aligned`` (feature-name suffix)."""
    stem = name[:-4] if name.endswith(".npy") else name
    return stem[4:] if stem.startswith("emb_") else stem


@dataclass(frozen=True)
class FeatureSpec:
    """One model input. ``kind``: ``user`` (per event id), ``item`` (per item, looked up through the
    item table, ``width`` ids pooled by ``pooling``), ``count`` (per event bucket id), ``dense``
    (frozen per-item float vector of size ``vocab``, projected to ``dim``, part of the item vector),
    ``sequence`` (per event item rows attended by its own DIN unit). ``table``: the embedding
    table an ``item`` feature reads, as torchrec's shared tables ("" = its own, named after the
    feature; ``"item_id"`` for the VQ bag of ``rank.vq_table: item_id``). ``content``: for a code
    feature of ``rank.code_content``, the size of each code's content vector (the mean embedding
    of the trained items that carry the code, ``ItemTables.content``), projected and added to the
    code's trainable row; 0 = none. ``rows``: whether the feature has trainable rows (False, with
    ``content``: a code is its projected content vector only, ``rank.code_rows: false``)."""

    name: str
    kind: Literal["user", "item", "count", "dense", "sequence"]
    vocab: int
    dim: int
    pooling: Literal["none", "mean", "sum"] = "none"
    width: int = 1
    table: str = ""
    content: int = 0
    rows: bool = True


def _compact(keys: np.ndarray, trained: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map integer keys [n] or [n, w] to 2.. (keys used by a ``trained`` row) or UNKNOWN.

    Returns (index int64 like ``keys``, the sorted trained keys int64 [V - 2]).
    """
    used = np.unique(keys[trained])
    return _lookup(used, keys), used


def _lookup(used: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Keys int64 [...] -> vocabulary index int64 [...] against the sorted trained keys ``used``."""
    keys = np.asarray(keys, np.int64)
    if not len(used):
        return np.full(keys.shape, UNKNOWN, np.int64)
    pos = np.searchsorted(used, keys).clip(0, len(used) - 1)
    return np.where(used[pos] == keys, pos + 2, UNKNOWN).astype(np.int64)


def _padded(rows: np.ndarray, fill: float = PAD) -> np.ndarray:
    """Prepend the PAD and UNKNOWN rows to a per-item array."""
    pad = np.full((2,) + rows.shape[1:], fill, dtype=rows.dtype)
    return np.concatenate([pad, rows])


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 [n, d] -> rows scaled to unit L2 norm (zero rows stay 0). Row by row, so a row's
    bits do not depend on which other rows share the call."""
    x = np.asarray(x, np.float32)
    norm = np.sqrt((x * x).sum(-1, keepdims=True))
    return x / np.maximum(norm, np.float32(1e-12))


def prefix_keys(rq: np.ndarray, bits: int) -> np.ndarray:
    """Raw RQ codes int64 [n, L] -> int64 [n, L]: column d-1 enumerates the prefix of depth d as a
    mixed-radix integer (``bits`` per level); -1 where a code is negative or does not fit."""
    n, depth = rq.shape
    out = np.full((n, depth), -1, np.int64)
    ok = np.ones(n, bool)
    key = np.zeros(n, np.int64)
    for d in range(depth):
        ok &= (rq[:, d] >= 0) & (rq[:, d] < (1 << bits))
        key = (key << bits) | np.where(ok, rq[:, d], 0)
        out[:, d] = np.where(ok, key, -1)
    return out


@dataclass
class ItemTables:
    """Per-item arrays, row = ``items.parquet`` row + 2 (see module docstring).

    index: name -> int64 [R, width] vocabulary indices; dense: name -> float32 [R, d];
    vocab: name -> vocabulary size; keys: code feature -> the sorted trained raw keys (what maps a new
    item's codes to the same indices), and ``vq_item``: int64 [pool] the item-id index of each VQ
    pool position (PAD where that pool item has no train event); vq: int64 [R, K] raw VQ pool positions, rq: int64 [R, L] raw RQ
    codes (-1 in the PAD/UNKNOWN rows; None without codes), rq_bits: bits per level of the prefix
    keys; sim_depth: the RQ prefix depth that groups the code variants' SIM hard search; cluster: dense name -> int64 [R] SIM cluster (-1 in PAD/UNKNOWN), centroids: dense name ->
    float32 [k, d] in unit-vector space; cos_edges: dense name -> float32 [J] cosine thresholds;
    content: code feature -> float32 [vocab, d] each code's content vector (``code_content``; one
    row per vocabulary index, not per item, so local tables and new items share it).
    """

    item_ids: np.ndarray
    index: dict[str, np.ndarray] = field(default_factory=dict)
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    vocab: dict[str, int] = field(default_factory=dict)
    keys: dict[str, np.ndarray] = field(default_factory=dict)
    vq: np.ndarray | None = None
    rq: np.ndarray | None = None
    rq_bits: int = 0
    sim_depth: int = 1
    cluster: dict[str, np.ndarray] = field(default_factory=dict)
    centroids: dict[str, np.ndarray] = field(default_factory=dict)
    cos_edges: dict[str, np.ndarray] = field(default_factory=dict)
    content: dict[str, np.ndarray] = field(default_factory=dict)

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Item ids int64 [n] -> item rows int64 [n] (UNKNOWN for ids outside the catalogue)."""
        if "_lookup" not in self.__dict__:
            self.__dict__["_lookup"] = IdIndex(self.item_ids, assume_sorted=True)
        return self.__dict__["_lookup"].rows(np.asarray(item_ids, np.int64), missing=UNKNOWN, offset=2)

    @property
    def n_rows(self) -> int:
        return len(self.index["item_id"]) if "item_id" in self.index else len(self.item_ids) + 2

    def _per_row(self) -> dict[str, dict[str, np.ndarray]]:
        """Every per-row array, by group (what ``take`` / ``append`` slice and extend)."""
        out = {"index": self.index, "dense": self.dense, "cluster": self.cluster}
        raw = {k: v for k, v in (("vq", self.vq), ("rq", self.rq)) if v is not None}
        return {**out, "raw": raw}

    def _with(self, per_row: dict[str, dict[str, np.ndarray]]) -> ItemTables:
        raw = per_row["raw"]
        return ItemTables(item_ids=np.zeros(0, np.int64), index=per_row["index"], dense=per_row["dense"],
                          vocab=dict(self.vocab), keys=self.keys, vq=raw.get("vq"), rq=raw.get("rq"),
                          rq_bits=self.rq_bits, sim_depth=self.sim_depth, cluster=per_row["cluster"],
                          centroids=self.centroids, cos_edges=self.cos_edges, content=self.content)

    def take(self, rows: np.ndarray) -> ItemTables:
        """A local table: PAD, UNKNOWN, then ``rows`` int64 [U] of this table (local row 2 + j =
        ``rows[j]``). O(U): what serving uses instead of the catalogue."""
        sel = np.r_[PAD, UNKNOWN, np.asarray(rows, np.int64)]
        return self._with({g: {k: v[sel] for k, v in d.items()} for g, d in self._per_row().items()})

    def append(self, vq: np.ndarray | None, rq: np.ndarray | None, dense: dict[str, np.ndarray]) -> ItemTables:
        """This table plus ``n`` new rows for items the run never saw (ids OOV, codes through the
        same compaction: a code no training item used -> UNKNOWN; dense SIM cluster = nearest
        centroid). vq int64 [n, K], rq int64 [n, L] raw codes (None when the table has none);
        dense: name -> float32 [n, d] for every dense embedding of the table."""
        n = len(next(iter(dense.values()))) if dense else len(vq if vq is not None else rq)
        new: dict[str, dict[str, np.ndarray]] = {"index": {}, "dense": {}, "cluster": {}, "raw": {}}
        new["index"]["item_id"] = np.full((n, 1), UNKNOWN, np.int64)
        for name in self.dense:
            x = np.asarray(dense[name], np.float32).reshape(n, -1)
            if x.shape[1] != self.dense[name].shape[1] or not np.isfinite(x).all():
                raise DataError(f"new items need finite float32 [n, {self.dense[name].shape[1]}] vectors, "
                                f"got shape {x.shape}", file=name)
            new["dense"][name] = x
            if name in self.cluster:
                new["cluster"][name] = nearest_centroid(self.centroids[name], unit_rows(x))
        if self.vq is not None:
            vq = np.asarray(vq, np.int64).reshape(n, -1)
            new["raw"]["vq"] = vq
            new["index"]["vq"] = _lookup(self.keys["vq"], vq)
            if "vq_item" in self.keys:
                new["index"]["vq_item"] = vq_item_index(self.keys["vq_item"], vq)
        if self.rq is not None:
            rq = np.asarray(rq, np.int64).reshape(n, -1)
            new["raw"]["rq"] = rq
            pk = prefix_keys(rq, self.rq_bits)
            for d in range(rq.shape[1]):
                new["index"][f"rq_l{d + 1}"] = _lookup(self.keys[f"rq_l{d + 1}"], rq[:, d:d + 1])
                if d >= 1:
                    new["index"][f"rq_p{d + 1}"] = _lookup(self.keys[f"rq_p{d + 1}"], pk[:, d:d + 1])
        old = self._per_row()
        merged = {g: {k: np.concatenate([v, new[g][k]]) for k, v in d.items()} for g, d in old.items()}
        return self._with(merged)


def nearest_centroid(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float32 [k, d] centroids, [n, d] rows -> int64 [n] nearest by squared L2."""
    if not len(x):
        return np.zeros(0, np.int64)
    from qarm.quant.kmeans import NearestCentroid

    return NearestCentroid(centroids).assign(np.ascontiguousarray(x, np.float32)).astype(np.int64)


def build_item_tables(items: pd.DataFrame, codes: pd.DataFrame | None, dense: dict[str, np.ndarray],
                      sim_clusters: int = 32, seed: int = 0, vq_pool_ids: np.ndarray | None = None,
                      sim_depth: int = 1, code_content: np.ndarray | None = None) -> ItemTables:
    """Item tables from items.parquet, codes.parquet and the dense embeddings (items order).

    items: sorted by item_id, with ``train_count``; codes: ``item_id``, ``vq`` list [K], ``rq`` list [L];
    dense: file name -> float32 [n_items, d]; sim_clusters: k of the k-means (on train items' unit
    vectors, seeded by ``seed``) whose clusters are the dense variants' SIM groups (0 = no dense SIM);
    vq_pool_ids: int64 [pool] the item id of each VQ pool position (``quant/vq_pool_ids.npy``), which
    adds the ``vq_item`` index (each VQ code as its pool item's id index, for ``rank.vq_table: item_id``);
    sim_depth: the RQ prefix depth (1 = the level-1 code) whose groups the code variants' SIM hard
    search keeps; code_content: float32 [n_items, d] the embedding the codes were quantised from,
    which adds ``ItemTables.content`` (``rank.code_content``). Raises DataError on NaN/inf, wrong
    shapes, missing codes, a depth beyond the levels.
    """
    item_ids = items["item_id"].to_numpy(np.int64)
    n = len(item_ids)
    trained_items = items["train_count"].to_numpy(np.int64) > 0
    trained = _padded(trained_items, False)
    t = ItemTables(item_ids=item_ids)
    ids = _padded(np.arange(n, dtype=np.int64), -1)[:, None]
    t.index["item_id"], used = _compact(ids, trained[:, None])
    t.vocab["item_id"] = len(used) + 2
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
        _add_dense_search(t, name, trained_items, sim_clusters, seed)
    if codes is not None:
        _add_codes(t, codes, trained)
        if not 1 <= sim_depth <= t.rq.shape[1]:
            raise ConfigError(f"rank.sim_depth: expected 1..{t.rq.shape[1]} (the RQ levels), got {sim_depth}")
        t.sim_depth = int(sim_depth)
        if vq_pool_ids is not None:
            _add_vq_item(t, np.asarray(vq_pool_ids, np.int64))
        if code_content is not None:
            _add_code_content(t, code_content, trained)
    return t


# the code features a content vector can back: the VQ bag in its own table, RQ levels and prefixes
# (not ``vq_item``, the bag read through the item-id table)
def _content_feature(name: str) -> bool:
    return name == "vq" or name.startswith(("rq_l", "rq_p"))


def _add_code_content(t: ItemTables, emb: np.ndarray, trained: np.ndarray) -> None:
    """Each code's content vector: the mean of ``emb`` over the trained items that carry the code.

    A code is then embedded as its trainable row plus a trained projection of this vector
    (``rank.code_content``): the projection is shared by all codes of a feature, so what a code
    learns from its items' events partly lives in a map from content to score, which a cold
    item's codes read too, instead of only in rows that can memorise their items. The PAD and OOV
    rows stay 0 (a dropped or unseen code adds nothing). Only trained items count, as for the
    vocabulary itself. Float64 sums, in item order: the same bytes for the same inputs.
    emb: float32 [n_items, d] (items.parquet order); trained: bool [R] (the padded rows)."""
    emb = np.asarray(emb)
    n = len(t.item_ids)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise DataError(f"code content: expected float32 [{n}, d] (one row per items.parquet row), got shape "
                        f"{emb.shape}", file="code content embedding")
    if not np.isfinite(emb).all():
        r = int(np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])
        raise DataError(f"code content: row(s) hold NaN or inf, first item_id {int(t.item_ids[r])}",
                        file="code content embedding", row=r)
    x = emb.astype(np.float64)[trained[2:]]
    for name, idx in t.index.items():
        if not _content_feature(name):
            continue
        codes = idx[2:][trained[2:]]                                  # [m, w] vocabulary indices
        sums = np.zeros((t.vocab[name], emb.shape[1]), np.float64)
        for j in range(codes.shape[1]):                               # one column of the bag at a time: O(m d)
            order = np.argsort(codes[:, j], kind="stable")
            keys, starts = np.unique(codes[order, j], return_index=True)
            sums[keys] += np.add.reduceat(x[order], starts, axis=0)
        counts = np.bincount(codes.reshape(-1), minlength=t.vocab[name])[:, None]
        content = (sums / np.maximum(counts, 1)).astype(np.float32)
        content[[PAD, UNKNOWN]] = 0.0
        t.content[name] = content


def vq_item_index(code_to_id: np.ndarray, vq: np.ndarray) -> np.ndarray:
    """Raw VQ codes int64 [n, K] (pool positions, -1 = none) -> item-id vocabulary indices int64
    [n, K] through ``code_to_id`` int64 [pool]; PAD for -1 and for codes outside the pool."""
    vq = np.asarray(vq, np.int64)
    ok = (vq >= 0) & (vq < len(code_to_id))
    return np.where(ok, code_to_id[np.where(ok, vq, 0)] if len(code_to_id) else PAD, PAD).astype(np.int64)


def _add_vq_item(t: ItemTables, pool_ids: np.ndarray) -> None:
    """VQ codes as item-id indices: code c is pool item ``pool_ids[c]``, looked up in the item-id
    table. A pool item without train events maps to PAD (left out of the mean), not to the OOV row:
    an untrained neighbour says nothing about the item."""
    if len(pool_ids) and int(t.vq.max(initial=-1)) >= len(pool_ids):
        raise DataError(f"VQ codes go up to {int(t.vq.max())} but the pool has {len(pool_ids)} items: "
                        f"rerun the 'quantize' stage", file="quant/vq_pool_ids.npy")
    id_index = t.rows(pool_ids)                                   # item rows, UNKNOWN outside the catalogue
    code_to_id = t.index["item_id"][id_index, 0]
    t.keys["vq_item"] = np.where(code_to_id > UNKNOWN, code_to_id, PAD).astype(np.int64)
    t.index["vq_item"] = vq_item_index(t.keys["vq_item"], t.vq)


def _add_dense_search(t: ItemTables, name: str, trained: np.ndarray, k: int, seed: int) -> None:
    """SIM clusters and cosine thresholds of one dense embedding, fitted on train items only."""
    u = unit_rows(t.dense[name][2:])
    fit = u[trained] if trained.any() else u
    rng = np.random.default_rng([seed, 7])
    sample = fit[np.sort(rng.choice(len(fit), min(len(fit), 2000), replace=False))] if len(fit) else fit
    if len(sample) >= 2:
        cos = (sample.astype(np.float64) @ sample.T.astype(np.float64))[np.triu_indices(len(sample), 1)]
        t.cos_edges[name] = np.quantile(cos, COS_QUANTILES).astype(np.float32)
    else:
        t.cos_edges[name] = np.ones(len(COS_QUANTILES), np.float32)
    k = min(k, len(fit))
    if k >= 1:
        from qarm.quant.kmeans import fit_kmeans

        centroids, _ = fit_kmeans(np.ascontiguousarray(fit), k, n_iter=25, n_init=1, init="kmeans++", seed=seed)
        t.centroids[name] = centroids.astype(np.float32)
        t.cluster[name] = _padded(nearest_centroid(t.centroids[name], u), -1)


def _add_codes(t: ItemTables, codes: pd.DataFrame, trained: np.ndarray) -> None:
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
    t.vq = _padded(vq, -1)
    t.index["vq"], t.keys["vq"] = _compact(t.vq, trained)
    t.index["vq"][0] = PAD
    t.vocab["vq"] = len(t.keys["vq"]) + 2
    # RQ: each level and each prefix (1, 1-2, 1-2-3, ...) as a mixed-radix key
    t.rq = _padded(rq, -1)
    t.rq_bits = max(1, int(rq.max(initial=0)).bit_length())
    if t.rq_bits * rq.shape[1] > 62:
        raise DataError(f"{rq.shape[1]} RQ levels of {t.rq_bits} bits do not fit one int64 prefix key",
                        file="codes.parquet", column="rq")
    prefix = prefix_keys(t.rq, t.rq_bits)
    for d in range(rq.shape[1]):
        for name, keys in ((f"rq_l{d + 1}", t.rq[:, d]), (f"rq_p{d + 1}", prefix[:, d])):
            if name == "rq_p1":
                continue  # the depth-1 prefix is the level-1 code
            t.index[name], t.keys[name] = _compact(keys[:, None], trained[:, None])
            t.index[name][0] = PAD
            t.vocab[name] = len(t.keys[name]) + 2


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


def sim_source(variant: str) -> str | None:
    """What groups a variant's SIM hard search: ``rq`` (an RQ prefix, ``ItemTables.sim_depth``), a dense file, or None."""
    if variant in RQ_VARIANTS:
        return "rq"
    if variant in ("frozen_mm", "ia_rep"):
        return DENSE_OF[variant]
    return None


def sim_name(source: str) -> str:
    """The sequence feature (and ``EventArrays.sims`` key) of a SIM source."""
    return "sim" if source == "rq" else f"sim_{dense_tag(source)}"


def variant_specs(variant: str, t: ItemTables, n_users: int, history: int, sim_history: int,
                  dim: int, code_dim: int, count_dim: int, vq_table: str = "own",
                  code_content: bool = False, code_rows: bool = True) -> list[FeatureSpec]:
    """The features of one ablation variant, built from the run's item tables.

    One skeleton for all: user id, item vector (id embedding ++ the variant's item representation)
    for the target, DIN over the history, DIN over a SIM hard search, bucketised match counts.
    Only the item representation (and so what SIM groups by and what the counts compare) differs.
    ``vq_table``: ``own`` (the VQ bag has its own table, a row per pool item used as a code) or
    ``item_id`` (code c reads pool item c's row of the item-id table: the bag is the mean of the
    item's nearest pool items' id embeddings). ``code_content``: the VQ bag (its own table) and
    the RQ levels and prefixes also read their codes' content vectors (``ItemTables.content``);
    ``code_rows`` False (with ``code_content``): those codes have no trainable rows, only content.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"rank.variants: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    specs = [FeatureSpec("user_id", "user", n_users, dim), FeatureSpec("item_id", "item", t.vocab["item_id"], dim),
             FeatureSpec("history", "sequence", history, 0)]
    n_buckets = len(COUNT_EDGES)
    if variant in CODE_VARIANTS and t.rq is None:
        raise DataError(f"variant {variant!r} needs codes: run the 'quantize' stage", file="codes.parquet")
    if variant in VQ_VARIANTS:
        if vq_table == "item_id":
            if "vq_item" not in t.index:
                raise DataError("rank.vq_table=item_id needs the VQ pool ids: rerun the 'quantize' stage",
                                file="quant/vq_pool_ids.npy")
            specs.append(FeatureSpec("vq_item", "item", t.vocab["item_id"], dim, "mean", t.index["vq_item"].shape[1],
                                     table="item_id"))
        elif vq_table == "own":
            specs.append(FeatureSpec("vq", "item", t.vocab["vq"], dim, "mean", t.index["vq"].shape[1],
                                     content=_content_dim(t, "vq", code_content), rows=code_rows or not code_content))
        else:
            raise ConfigError(f"rank.vq_table: expected one of {VQ_TABLES}, got {vq_table!r}")
        specs += [FeatureSpec(c, "count", n_buckets, count_dim) for c in ("vq_overlap_items", "vq_overlap_codes")]
    if variant in RQ_VARIANTS:
        depth = t.rq.shape[1]
        specs += [FeatureSpec(name, "item", t.vocab[name], code_dim, content=_content_dim(t, name, code_content),
                              rows=code_rows or not code_content)
                  for name in [f"rq_l{d}" for d in range(1, depth + 1)] + [f"rq_p{d}" for d in range(2, depth + 1)]]
        specs += [FeatureSpec(f"rq_match_{d}", "count", n_buckets, count_dim) for d in range(1, depth + 1)]
    dense = DENSE_OF.get(variant)
    if dense:
        if dense not in t.dense:
            raise DataError(f"variant {variant!r} needs {dense}: run the 'align' stage", file=dense)
        specs.append(FeatureSpec(dense, "dense", t.vocab[dense], dim))
        specs += [FeatureSpec(f"cos_match_{j + 1}_{dense_tag(dense)}", "count", n_buckets, count_dim)
                  for j in range(len(t.cos_edges[dense]))]
    source = sim_source(variant)
    if source == "rq" or (source is not None and source in t.cluster):
        specs.append(FeatureSpec(sim_name(source), "sequence", sim_history, 0))
    return specs


def _content_dim(t: ItemTables, name: str, wanted: bool) -> int:
    if not wanted:
        return 0
    if name not in t.content:
        raise DataError(f"rank.code_content needs the codes' content vectors for {name!r}: build the item tables "
                        f"with the embedding the codes were quantised from", file="codes.parquet")
    return int(t.content[name].shape[1])


def bucketize(counts: np.ndarray) -> np.ndarray:
    """Counts int [..] -> bucket ids int64 [..] in [0, len(COUNT_EDGES))."""
    return (np.searchsorted(COUNT_EDGES, counts, side="right") - 1).astype(np.int64)


def match_counts(t: ItemTables, target: np.ndarray, hist: np.ndarray, chunk: int = 1 << 23) -> dict[str, np.ndarray]:
    """Match counts between each target and its history (raw counts, int64 [Q] each), computed per
    event from the rows' own codes and vectors (no item x item matrix).

    target: int64 [Q] item rows; hist: int64 [Q, N] item rows (PAD = 0).
    ``rq_match_d``: history items sharing the target's RQ prefix of depth d;
    ``vq_overlap_items``: history items whose VQ code set meets the target's;
    ``vq_overlap_codes``: codes shared, summed over the history;
    ``cos_match_j_<tag>``: history items whose cosine with the target (that dense embedding) is at
    least the j-th threshold of ``t.cos_edges``.
    Each event's figures depend on its own rows only, so a batch of one gives the same counts.
    """
    target, hist = np.asarray(target, np.int64), np.asarray(hist, np.int64)
    q, n = hist.shape
    out: dict[str, np.ndarray] = {}
    width = max(1, n * max(t.vq.shape[1] if t.vq is not None else 1,
                           max((d.shape[1] for d in t.dense.values()), default=1)))
    step = max(1, chunk // width)
    parts: dict[str, list[np.ndarray]] = {}
    # chunks in target order: a chunk's events then share targets, which ``shared_codes`` groups
    order = np.argsort(target, kind="stable")
    n_codes = int(t.vq.max(initial=-1)) + 1 if t.vq is not None else 0  # once per call, not per chunk
    for s in range(0, q, step):
        rows = order[s:s + step]
        for k, v in _match_chunk(t, target[rows], hist[rows], n_codes).items():
            parts.setdefault(k, []).append(v)
    for k, v in parts.items():
        out[k] = np.empty(q, np.int64)
        out[k][order] = np.concatenate(v) if v else np.zeros(0, np.int64)
    if q == 0:
        out = {k: np.zeros(0, np.int64) for k in _match_chunk(t, target[:0], hist[:0])}
    return out


def shared_codes(vq: np.ndarray, target: np.ndarray, hist: np.ndarray, n_codes: int | None = None) -> np.ndarray:
    """Codes each target shares with each of its history items: int64 [Q, N], the number of
    (target code, history-item code) pairs that are equal (-1 codes, of PAD / UNKNOWN rows, match
    nothing).

    vq: int [R, K] codes per row; target: int64 [Q] rows; hist: int64 [Q, N] rows. Events are
    grouped by target: each target's codes are counted into a pool-sized table once, and every
    history code of its events is one lookup there, K lookups per history item instead of the
    K x K comparisons of a broadcast (``benchmarks/bench_match.py`` measures both; the table,
    ``max code + 2`` bytes, stays in cache). ``n_codes``: a bound on the codes (max + 1), when
    the caller knows it (default: computed from ``vq``).
    """
    q, n = hist.shape
    out = np.zeros((q, n), np.int64)
    if q == 0 or vq.size == 0:
        return out
    n_codes = int(vq.max(initial=-1)) + 1 if n_codes is None else int(n_codes)
    table = np.zeros(n_codes + 1, np.uint8 if vq.shape[1] < 256 else np.int64)  # slot 0: code -1, never set
    order = np.argsort(target, kind="stable")
    ts = target[order]
    starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
    for a, b in zip(starts.tolist(), np.r_[starts[1:], q].tolist()):
        codes = vq[ts[a]]
        codes = codes[codes >= 0] + 1
        np.add.at(table, codes, 1)  # a code listed twice counts twice, as in the pairwise comparison
        rows = order[a:b]
        out[rows] = table[vq[hist[rows]] + 1].sum(-1)
        table[codes] = 0
    return out


def _match_chunk(t: ItemTables, target: np.ndarray, hist: np.ndarray, n_codes: int | None = None) -> dict[str, np.ndarray]:
    valid = hist > PAD
    out: dict[str, np.ndarray] = {}
    if t.rq is not None:
        rt, rh = t.rq[target], t.rq[hist]                                      # [Q, L], [Q, N, L]
        same = np.logical_and.accumulate((rh == rt[:, None, :]) & (rt[:, None, :] >= 0), axis=2)
        same &= valid[:, :, None]
        for d in range(t.rq.shape[1]):
            out[f"rq_match_{d + 1}"] = same[:, :, d].sum(1).astype(np.int64)
    if t.vq is not None:
        per_item = shared_codes(t.vq, target, hist, n_codes=n_codes)
        out["vq_overlap_items"] = (per_item > 0).sum(1).astype(np.int64)
        out["vq_overlap_codes"] = per_item.sum(1).astype(np.int64)
    for name, edges in t.cos_edges.items():
        x = t.dense[name]
        ut, uh = unit_rows(x[target]), unit_rows(x[hist])
        cos = (uh * ut[:, None, :]).sum(-1)                                    # [Q, N], row by row
        for j, e in enumerate(edges):
            out[f"cos_match_{j + 1}_{dense_tag(name)}"] = ((cos >= e) & valid).sum(1).astype(np.int64)
    return out


@dataclass
class EventArrays:
    """Per-event model inputs for one set of events.

    user: int64 [E] user index (UNKNOWN for users without train events); target: int64 [E] item rows;
    hist: the history (``history_len`` last positives) as offsets into the sorted positives;
    sims: SIM sequence name -> offsets (``sim_len`` last positives sharing the target's group);
    counts: name -> int8 [E] bucket ids; labels: float32 [E, T]; split: object [E]; user_id: [E]
    raw ids (GAUC groups).
    """

    user: np.ndarray
    target: np.ndarray
    hist: Sequences
    sims: dict[str, Sequences]
    counts: dict[str, np.ndarray]
    labels: np.ndarray
    split: np.ndarray
    user_id: np.ndarray
    history_len: int = 50
    sim_len: int = 20

    def __len__(self) -> int:
        return len(self.target)

    @property
    def history(self) -> np.ndarray:
        """int64 [E, N] dense history (materialised; for tests and small sets)."""
        return self.hist.materialise(self.history_len)

    def sim(self, name: str = "sim") -> np.ndarray:
        """int64 [E, S] dense SIM sequence ``name`` (zeros when there is none)."""
        if name not in self.sims:
            return np.zeros((len(self), self.sim_len), np.int64)
        return self.sims[name].materialise(self.sim_len)

    def subset(self, mask: np.ndarray) -> EventArrays:
        return EventArrays(self.user[mask], self.target[mask], self.hist.subset(mask),
                           {k: v.subset(mask) for k, v in self.sims.items()},
                           {k: v[mask] for k, v in self.counts.items()}, self.labels[mask], self.split[mask],
                           self.user_id[mask], self.history_len, self.sim_len)


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


def sim_groups(t: ItemTables) -> dict[str, np.ndarray]:
    """SIM sequence name -> int64 [R] group of each item row (-1 for PAD/UNKNOWN): the code
    variants' ``sim`` groups by the RQ prefix of depth ``t.sim_depth``."""
    out = {}
    if t.rq is not None:
        out["sim"] = t.rq[:, 0] if t.sim_depth <= 1 else prefix_keys(t.rq, t.rq_bits)[:, t.sim_depth - 1]
    for name, c in t.cluster.items():
        out[sim_name(name)] = c
    return out


def build_events(t: ItemTables, events: pd.DataFrame, tasks: list[str], history_label: str,
                 history: int, sim_history: int, chunk: int = 65536) -> tuple[EventArrays, dict[str, int]]:
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
    user = IdIndex(np.unique(users[split == "train"]), assume_sorted=True, name="user_id").rows(
        users, missing=UNKNOWN, offset=2)
    group = np.unique(users, return_inverse=True)[1].astype(np.int64)

    is_pos = np.isin(split, HISTORY_SPLITS) & (ev[history_label].to_numpy() == 1) & (target > UNKNOWN)
    hist = sequences_before(group[is_pos], ts[is_pos], target[is_pos], group, ts)
    sims: dict[str, Sequences] = {}
    for name, g in sim_groups(t).items():
        n_g = int(g.max()) + 2
        sims[name] = sequences_before(group[is_pos] * n_g + g[target[is_pos]] + 1, ts[is_pos], target[is_pos],
                                      group * n_g + g[target] + 1, ts)
    counts: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(ev), chunk):  # the dense history exists one chunk at a time
        part = match_counts(t, target[s:s + chunk], hist.materialise(history, slice(s, s + chunk)))
        for k, v in part.items():
            counts.setdefault(k, []).append(bucketize(v).astype(np.int8))
    labels = ev[tasks].to_numpy(np.float32)
    info = {"n_events": len(ev), "n_unknown_items": n_unknown_items,
            "n_empty_history": int((hist.lengths() == 0).sum()),
            "n_users_oov": int((user == UNKNOWN).sum())}
    info.update({f"n_{s}": int((split == s).sum()) for s in EVENT_SPLITS})
    return EventArrays(user.astype(np.int64), target, hist, sims,
                       {k: np.concatenate(v) for k, v in counts.items()}, labels, split, users,
                       history, sim_history), info
