"""VQ codes (QARM): the code of an item is the positions of its top-K nearest items in a reference pool.

The pool is every candidate item, the most popular ones (by train count) or a random sample. Search is
exact (faiss flat) or approximate (HNSW graph or IVF lists) for large pools. A pool item can exclude
itself, so its code describes its neighbourhood and not its own id.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from qarm.io import read_json, read_npy, write_bytes, write_json, write_npy
from qarm.lookup import IdIndex
from qarm.quant.checks import ParamsMixin, QuantizeError, check_choice, check_embeddings, check_int

RESCORE_MARGIN = 8  # extra candidates fetched so that near-ties at the k-th place are ranked exactly


class VQCoder(ParamsMixin):
    """Top-K nearest pool items as a code (scikit-learn style: parameters stored as given, checked in
    ``fit``; ``sklearn.base.clone`` works).

    Parameters: ``k``; ``pool`` "all" | "popular" | "random"; ``pool_size`` (0 = every candidate);
    ``metric`` "cosine" | "l2"; ``index`` "flat" | "hnsw" | "ivf"; ``exclude_self``; ``hnsw_m``,
    ``ef_search``, ``ivf_nlist`` (0 = auto), ``nprobe``; ``seed``.

    Learned: ``pool_ids_`` int64 [N] (code c means item ``pool_ids_[c]``), ``pool_emb_`` float32 [N, dim],
    ``index_`` (faiss), ``dim_``.
    """

    def __init__(self, k: int = 25, *, pool: str = "all", pool_size: int = 0, metric: str = "cosine",
                 index: str = "flat", exclude_self: bool = True, hnsw_m: int = 32, ef_search: int = 128,
                 ivf_nlist: int = 0, nprobe: int = 16, seed: int = 0) -> None:
        self.k = k
        self.pool = pool
        self.pool_size = pool_size
        self.metric = metric
        self.index = index
        self.exclude_self = exclude_self
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.ivf_nlist = ivf_nlist
        self.nprobe = nprobe
        self.seed = seed

    def _validate_params(self) -> None:
        check_choice(self.pool, "vq_pool", ("all", "popular", "random"))
        check_choice(self.metric, "vq_metric", ("cosine", "l2"))
        check_choice(self.index, "vq_index", ("flat", "hnsw", "ivf"))
        check_int(self.k, "vq_k", 1)
        check_int(self.pool_size, "vq_pool_size", 0)
        check_int(self.hnsw_m, "vq_hnsw_m", 2)
        check_int(self.ef_search, "vq_ef_search", 1)
        check_int(self.ivf_nlist, "vq_ivf_nlist", 0)
        check_int(self.nprobe, "vq_nprobe", 1)

    def fit(self, emb: np.ndarray, item_ids: np.ndarray, popularity: np.ndarray | None = None) -> VQCoder:
        """Choose the pool among the candidates emb float32 [n, dim] with ids int64 [n] and build the index.

        ``popularity`` (e.g. train counts, [n]) ranks candidates for ``pool="popular"``.
        """
        self._validate_params()
        emb = check_embeddings(emb, "VQCoder.fit(emb)", ids=item_ids)
        item_ids = np.asarray(item_ids, np.int64)
        n = len(emb)
        size = n if self.pool_size <= 0 else min(self.pool_size, n)
        if self.pool == "popular":
            if popularity is None:
                raise QuantizeError("vq_pool='popular' needs item popularity (train_count)")
            # most popular first; ties by item id, so the pool is deterministic
            pick = np.lexsort((item_ids, -np.asarray(popularity)))[:size]
        elif self.pool == "random":
            pick = np.random.default_rng(self.seed).choice(n, size, replace=False)
        else:
            pick = np.arange(n)[:size] if size < n else np.arange(n)
        pick = pick[np.argsort(item_ids[pick], kind="stable")]  # pool sorted by id: self lookup by searchsorted
        need = self.k + (1 if self.exclude_self else 0)
        if need > len(pick):
            raise QuantizeError(f"vq_k={self.k} needs a pool of at least {need} items "
                                f"({'K + 1 with exclude_self' if self.exclude_self else 'K'}), but the pool has "
                                f"{len(pick)}: lower vq_k or raise vq_pool_size")
        self.dim_ = emb.shape[1]
        self.pool_ids_ = item_ids[pick]
        self.pool_emb_ = self._prepare(emb[pick])
        self.index_ = self._build_index(self.pool_emb_)
        return self

    def transform(self, emb: np.ndarray, item_ids: np.ndarray | None = None, batch: int = 8192) -> np.ndarray:
        """Codes int32 [n, k]: pool positions of each row's k nearest pool items, nearest first.

        With ``exclude_self`` and ``item_ids`` given, a row whose id is in the pool skips itself.
        """
        self._check_fitted()
        emb = self._prepare(check_embeddings(emb, "VQCoder.transform(emb)", dim=self.dim_, ids=item_ids))
        self_pos = np.full(len(emb), -1, np.int64)
        if self.exclude_self and item_ids is not None:
            self_pos = IdIndex(self.pool_ids_, assume_sorted=True).rows(item_ids, missing=-1)
        # search a few more than needed, then rescore the candidates row by row in float64 and sort by
        # (score, pool position): faiss's batched float32 kernels may order near-ties differently for
        # different batches, and the same item must always get the same code
        fetch = min(self.k + 1 + RESCORE_MARGIN, len(self.pool_ids_))
        out = np.empty((len(emb), self.k), np.int32)
        for s in range(0, len(emb), batch):
            q = emb[s:s + batch]
            _, nn = self.index_.search(q, fetch)
            out[s:s + batch] = self._rescore(q, nn, self_pos[s:s + batch])
        return out

    def _rescore(self, q: np.ndarray, nn: np.ndarray, self_pos: np.ndarray) -> np.ndarray:
        """Top k of candidates nn int64 [b, m] (-1 = none) by exact float64 score, self and missing dropped."""
        valid = (nn >= 0) & (nn != self_pos[:, None])
        cand = np.where(valid, nn, 0)
        vec = self.pool_emb_[cand].astype(np.float64)                      # [b, m, d]
        qd = q.astype(np.float64)[:, None, :]
        score = -np.einsum("bmd,bmd->bm", vec, qd) if self.metric == "cosine" else \
            np.einsum("bmd,bmd->bm", vec - qd, vec - qd)                   # lower is nearer
        score[~valid] = np.inf
        order = np.lexsort((cand, score), axis=-1)[:, :self.k]
        if (~np.take_along_axis(valid, order, 1)).any():
            raise QuantizeError("the approximate index returned fewer than k neighbours: raise vq_ef_search or "
                                "vq_nprobe, or use vq_index=flat")
        return np.take_along_axis(cand, order, 1).astype(np.int32)

    def neighbor_overlap(self, codes: np.ndarray, item_ids: np.ndarray, sample: int = 100_000) -> float:
        """Mean share of codes an item shares with its nearest pool item's codes (both coded in ``codes``).

        codes int32 [n, k] in the order of ``item_ids`` [n]. High values mean neighbours carry near-identical
        codes (smooth but redundant); 0 means unrelated.
        """
        ids = np.asarray(item_ids, np.int64)
        order = np.argsort(ids, kind="stable")
        pos, has = IdIndex(ids[order], assume_sorted=True).find(self.pool_ids_[codes[:, 0]])
        if not has.any():
            return 0.0
        rows = np.flatnonzero(has)
        if len(rows) > sample:  # a per-row set intersection: a fixed random sample is plenty
            rows = np.sort(np.random.default_rng(self.seed).choice(rows, sample, replace=False))
        a, b = codes[rows], codes[order[pos[rows]]]
        # shared codes per row: sort both rows side by side, count values present in both
        both = np.sort(np.concatenate([a, b], axis=1), axis=1)
        shared = (both[:, 1:] == both[:, :-1]).sum(1)
        return float(np.mean(shared) / codes.shape[1])

    # -------------------------------------------------------------- helpers
    def _prepare(self, emb: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":
            emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        return np.ascontiguousarray(emb, dtype=np.float32)

    def _build_index(self, pool: np.ndarray) -> faiss.Index:
        d = pool.shape[1]
        ip = self.metric == "cosine"
        mt = faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2
        if self.index == "hnsw":
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, mt)
            index.hnsw.efConstruction = max(40, 2 * self.hnsw_m)
            index.hnsw.efSearch = max(self.ef_search, self.k + 1)
        elif self.index == "ivf":
            nlist = self.ivf_nlist or max(1, min(len(pool) // 39, int(4 * np.sqrt(len(pool)))))
            quantizer = faiss.IndexFlatIP(d) if ip else faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, mt)
            index.cp.seed = self.seed
            index.train(pool)
            index.nprobe = min(self.nprobe, nlist)
        else:
            index = faiss.IndexFlatIP(d) if ip else faiss.IndexFlatL2(d)
        index.add(pool)
        return index

    def _check_fitted(self) -> None:
        if not hasattr(self, "index_"):
            raise QuantizeError("VQCoder is not fitted: call fit() or VQCoder.load(path) first")

    # ------------------------------------------------------------ save/load
    def save(self, directory: str | Path) -> None:
        """Write vq.json, vq_pool_ids.npy, vq_pool_emb.npy and the faiss index vq.index (atomic writes)."""
        self._check_fitted()
        d = Path(directory)
        write_npy(d / "vq_pool_ids.npy", self.pool_ids_)
        write_npy(d / "vq_pool_emb.npy", self.pool_emb_)
        write_bytes(d / "vq.index", faiss.serialize_index(self.index_).tobytes())
        write_json(d / "vq.json", {"params": self.get_params(), "dim": self.dim_})

    @classmethod
    def load(cls, directory: str | Path) -> VQCoder:
        d = Path(directory)
        meta = read_json(d / "vq.json")
        if meta is None:
            raise QuantizeError(f"{d / 'vq.json'} is missing: run the 'quantize' stage first")
        model = cls(**meta["params"])
        model.dim_ = int(meta["dim"])
        model.pool_ids_ = read_npy(d / "vq_pool_ids.npy")
        model.pool_emb_ = read_npy(d / "vq_pool_emb.npy")
        # the frozen index, not a rebuilt one: an approximate index must answer exactly as at fit time
        model.index_ = faiss.deserialize_index(np.frombuffer((d / "vq.index").read_bytes(), np.uint8))
        if model.index == "hnsw":
            model.index_.hnsw.efSearch = max(model.ef_search, model.k + 1)
        elif model.index == "ivf":
            faiss.extract_index_ivf(model.index_).nprobe = model.nprobe
        return model

