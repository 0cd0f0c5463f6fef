"""RQ-Kmeans: residual k-means semantic IDs, L levels of K_l codes each.

Level l runs k-means (faiss, k-means++ seeds, best of ``n_init``) on what the levels before it left
unexplained; the code of an item is its nearest centroid per level. Then ``refine_rounds`` of joint
codebook refinement: each level's centroids are re-estimated as the mean of ``x - (all other levels'
centroids)`` over its items, which lowers the error greedy level-by-level training leaves behind.

``balanced=True`` adds capacity-capped last-level assignment (``qarm.quant.balance``): sparse prices
that push items out of over-full full codes at a bounded error cost. The transform stays one GEMM +
argmin per level; the prices are one gathered row per item (dense price rows of the priced prefixes),
added before the last argmin. Products run in fixed-row blocks, so an item's codes are the same alone,
in a request or in the whole catalogue.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from qarm.io import read_json, read_npy, write_json, write_npy
from qarm.lookup import IdIndex
from qarm.quant.balance import add_prices, capacity_prices
from qarm.quant.checks import ParamsMixin, QuantizeError, check_choice, check_codes, check_embeddings, check_int
from qarm.quant.kmeans import NearestCentroid, fit_kmeans
from qarm.quant.parquet import iter_embedding_batches


GEMM_ROWS = 1024  # rows per fixed-shape GEMM block (see fixed_rows_matmul)


def fixed_rows_matmul(a: np.ndarray, b: np.ndarray, rows: int = GEMM_ROWS) -> np.ndarray:
    """a float32 [n, k] @ b float32 [k, m] -> float32 [n, m], whose rows do not depend on which other
    rows share the call, so an item gets the same scores, hence the same codes, alone, in a request
    of 7 or in the whole catalogue (docs/determinism.md).

    BLAS picks kernels and blocking by shape, so blocks of exactly ``rows`` rows (the last one
    zero-padded) fix the shape. That is not enough everywhere: OpenBLAS's Zen/Haswell sgemm rounds a
    row differently by its position inside the block (measured on an AMD EPYC: position 5 and 8 of
    the same block give different float32 bits). So the blocks are multiplied in float64 and
    rounded to float32: the float64 results of one row at two positions differ by a few float64
    ulps at most, which round to the same float32 unless they straddle a float32 rounding boundary
    (about 2^-29 per element)."""
    n = a.shape[0]
    b64 = np.asarray(b, np.float64)
    out = np.empty((n, b.shape[1]), np.float32)
    blk = np.zeros((rows, a.shape[1]), np.float64)
    for s in range(0, n, rows):
        m = min(rows, n - s)
        blk[:m] = a[s:s + m]
        if m < rows:
            blk[m:] = 0.0
        out[s:s + m] = (blk @ b64)[:m]
    return out


class _Plan:
    """What the transform multiplies and gathers, prepared once per call.

    ``mats``: per level [-2 C^T; ||c||^2] float32 [d + 1, K]; ``aug``: per level [C, 0] float32 [K, d + 1]
    (the residual update runs on the augmented rows, contiguous, and leaves their constant 1 column as is).

    With prices (``price_keys`` int64 [p] sorted, ``price_values`` float32 [p]) it also holds them as dense
    rows, so pricing a chunk is one gather and one add instead of a scatter per priced code:
    ``price_rows`` float32 [q + 1, K_last] (row q all zeros, for prefixes without prices) and the prefix
    -> row map (``prefix_rows`` int32 [prod(sizes[:-1])] when that is small, else a sorted
    ``price_prefixes`` int64 [q] to search). Rows stay sparse (``price_rows`` None) when the table would
    exceed ``max_table_bytes`` or dwarf a small request of ``n_rows``.
    """

    def __init__(self, codebooks: list[np.ndarray], price_keys: np.ndarray | None = None,
                 price_values: np.ndarray | None = None, n_rows: int = 0,
                 max_table_bytes: int = 256 << 20) -> None:
        self.centroids = [np.ascontiguousarray(C, dtype=np.float32) for C in codebooks]
        self.mats = [np.ascontiguousarray(np.vstack([-2.0 * C.T, np.einsum("ij,ij->i", C, C)[None, :]]),
                                          dtype=np.float32) for C in self.centroids]
        self.aug = [np.hstack([C, np.zeros((len(C), 1), np.float32)]) for C in self.centroids]
        self.price_rows: np.ndarray | None = None
        self.price_prefixes: IdIndex | None = None
        self.prefix_rows: np.ndarray | None = None
        if price_keys is None or not price_keys.size:
            return
        k = len(self.centroids[-1])
        prefixes, inverse = np.unique(price_keys // k, return_inverse=True)
        q = len(prefixes)
        if (q + 1) * k * 4 > max_table_bytes or q > 4 * max(n_rows, 1):
            return
        rows = np.zeros((q + 1, k), np.float32)
        rows[inverse.ravel(), price_keys % k] = price_values
        self.price_rows, self.price_prefixes = rows, IdIndex(prefixes, assume_sorted=True, name="code prefix")
        n_prefix = int(np.prod([len(C) for C in self.centroids[:-1]], dtype=np.float64))
        if n_prefix <= 4 * max(n_rows, q, 1) and n_prefix <= 1 << 22:
            self.prefix_rows = np.full(n_prefix, q, np.int32)
            self.prefix_rows[prefixes] = np.arange(q, dtype=np.int32)

    def price_row(self, prefix: np.ndarray) -> np.ndarray:
        """prefix int64 [b] -> row of ``price_rows`` [b] (the zero row q for unpriced prefixes)."""
        if self.prefix_rows is not None:
            return self.prefix_rows[prefix]
        return self.price_prefixes.rows(prefix, missing=len(self.price_prefixes))


class RQKMeans(ParamsMixin):
    """Residual k-means quantiser (scikit-learn style: parameters stored as given, checked in ``fit``;
    ``sklearn.base.clone`` works).

    Parameters: ``sizes`` codes per level; ``n_iter`` Lloyd iterations; ``n_init`` restarts per level;
    ``init`` "kmeans++" or "random"; ``max_train_points`` k-means sample (0 = all); ``refine_rounds``;
    ``balanced`` and its ``balance_budget`` (max extra squared error per item as a share of the mean
    error), ``balance_candidates`` and ``balance_rounds``; ``chunk_size`` rows per transform chunk;
    ``n_threads`` transform threads (0 = all cores); ``seed``; ``verbose`` (progress bars).

    Learned: ``codebooks_`` list of float32 [K_l, dim]; ``price_keys_`` int64 [p], ``price_values_``
    float32 [p] (balanced); ``dim_``.
    """

    def __init__(self, sizes: Sequence[int] = (256, 256, 256), *, n_iter: int = 25, n_init: int = 1,
                 init: str = "kmeans++", max_train_points: int = 500_000, refine_rounds: int = 2,
                 balanced: bool = True, balance_budget: float = 0.2, balance_candidates: int = 32,
                 balance_rounds: int = 30, chunk_size: int = 8192, n_threads: int = 0, seed: int = 0,
                 verbose: bool = False) -> None:
        self.sizes = sizes
        self.n_iter = n_iter
        self.n_init = n_init
        self.init = init
        self.max_train_points = max_train_points
        self.refine_rounds = refine_rounds
        self.balanced = balanced
        self.balance_budget = balance_budget
        self.balance_candidates = balance_candidates
        self.balance_rounds = balance_rounds
        self.chunk_size = chunk_size
        self.n_threads = n_threads
        self.seed = seed
        self.verbose = verbose

    def _validate_params(self) -> None:
        sizes = list(self.sizes) if isinstance(self.sizes, (list, tuple, np.ndarray)) else None
        if not sizes or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in sizes):
            raise QuantizeError(f"rq_sizes must be a non-empty list of positive code counts, got {self.sizes!r}")
        check_int(self.n_iter, "rq_iters", 1)
        check_int(self.n_init, "rq_n_init", 1)
        check_choice(self.init, "rq_init", ("kmeans++", "random"))
        check_int(self.max_train_points, "rq_max_train_points", 0)
        check_int(self.refine_rounds, "rq_refine_rounds", 0)
        check_int(self.balance_candidates, "rq_balance_candidates", 1)
        check_int(self.balance_rounds, "rq_balance_rounds", 0)
        check_int(self.chunk_size, "rq_chunk_size", 1)
        check_int(self.n_threads, "n_threads", 0)
        if not np.isfinite(self.balance_budget) or self.balance_budget < 0:
            raise QuantizeError(f"rq_balance_budget must be >= 0, got {self.balance_budget!r}")

    # ------------------------------------------------------------------ fit
    def fit(self, X: np.ndarray) -> RQKMeans:
        """Fit codebooks (and balance prices) on X float32 [n, dim]."""
        self._validate_params()
        X = check_embeddings(X, "RQKMeans.fit(X)", allow_zero=True)
        n, self.dim_ = X.shape
        rng = np.random.default_rng(self.seed)
        train = X
        if self.max_train_points and n > self.max_train_points:
            train = X[np.sort(rng.choice(n, self.max_train_points, replace=False))]
        r = train.copy()
        self.codebooks_ = []
        for level, k in enumerate(tqdm(self.sizes, desc="rq levels", disable=not self.verbose, leave=False)):
            C, _ = fit_kmeans(r, k, n_iter=self.n_iter, n_init=self.n_init, init=self.init,
                              seed=self.seed * 1000 + level)
            self.codebooks_.append(C)
            r -= C[NearestCentroid(C).assign(r)]
        self._refine(train)
        self.price_keys_ = np.empty(0, np.int64)
        self.price_values_ = np.empty(0, np.float32)
        if self.balanced:
            self._fit_prices(X)
        return self

    def _refine(self, X: np.ndarray) -> None:
        """Joint refinement: re-encode, then set each level's centroids to the mean of what it should explain."""
        best_mse = _mse(X, self._decode(self._encode(X, prices=False)))
        for _ in range(self.refine_rounds):
            old = [C.copy() for C in self.codebooks_]
            codes = self._encode(X, prices=False)
            resid = X - self._decode(codes)
            for level, C in enumerate(self.codebooks_):
                a = codes[:, level]
                target = resid + C[a]  # what this level must explain given all the others
                sums, counts = _cluster_sums(a, target, len(C))
                used = counts > 0  # an empty cluster keeps its centroid
                C[used] = sums[used] / counts[used, None]
                resid = target - C[a]
            mse = _mse(X, self._decode(self._encode(X, prices=False)))
            if mse >= best_mse:  # greedy re-encoding can undo the gain: keep the better codebooks
                self.codebooks_ = old
                break
            best_mse = mse

    def _fit_prices(self, X: np.ndarray) -> None:
        """Capacity-capped last level on every fitted item (the catalogue whose collisions matter)."""
        last = NearestCentroid(self.codebooks_[-1])

        def chunks():
            for _, chunk in self._chunks(X):
                codes, r = self._encode_chunk(chunk, upto=len(self.sizes) - 1)
                sc = last.scores(r)  # squared distance minus ||r||^2
                yield self._prefix(codes), sc, sc.min(axis=1) + np.einsum("ij,ij->i", r, r)

        self.price_keys_, self.price_values_ = capacity_prices(chunks(), X.shape[0], self.sizes[-1],
                                                               self.balance_candidates, self.balance_budget,
                                                               self.balance_rounds, self.verbose)

    # ------------------------------------------------------------ transform
    def transform(self, X: np.ndarray) -> np.ndarray:
        """Codes int32 [n, L] of X float32 [n, dim], computed chunk by chunk (GEMM + argmin per level)."""
        self._check_fitted()
        X = check_embeddings(X, "RQKMeans.transform(X)", dim=self.dim_, allow_zero=True)
        return self._encode(X, prices=True)

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)

    def inverse_transform(self, codes: np.ndarray) -> np.ndarray:
        """Reconstruction float32 [n, dim] = sum of each level's centroid, from codes int [n, L]."""
        self._check_fitted()
        codes = check_codes(codes, self.sizes)
        return self._decode(codes)

    def transform_batches(self, batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """Stream: codes int32 [b, L] for each float32 [b, dim] batch (a catalogue larger than memory)."""
        self._check_fitted()
        offset = 0
        for batch in batches:
            batch = check_embeddings(batch, "embedding batch", dim=self.dim_, allow_zero=True, offset=offset)
            offset += len(batch)
            yield self._encode(batch, prices=True)

    def transform_parquet(self, path: str | Path, column: str = "embedding", batch_rows: int = 65536) -> np.ndarray:
        """Codes int32 [n, L] for a Parquet file whose ``column`` holds one list<float> embedding per row.

        Reads ``batch_rows`` rows at a time, so only the codes (L ints per item) are held for the whole file.
        """
        return np.concatenate(list(self.transform_batches(iter_embedding_batches(path, column, batch_rows))) or
                              [np.empty((0, len(self.sizes)), np.int32)])

    # -------------------------------------------------------------- helpers
    def _chunks(self, X: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        for s in range(0, X.shape[0], self.chunk_size):
            yield s, X[s:s + self.chunk_size]

    def _encode(self, X: np.ndarray, prices: bool) -> np.ndarray:
        """Codes int32 [n, L]; chunks run on ``n_threads`` threads with single-threaded BLAS each, so the
        argmin and residual updates run in parallel too (numpy releases the GIL in all of them)."""
        codes = np.empty((X.shape[0], len(self.sizes)), np.int32)
        plan = _Plan(self.codebooks_, self.price_keys_, self.price_values_, X.shape[0]) if prices else \
            _Plan(self.codebooks_)
        starts = range(0, X.shape[0], self.chunk_size)
        threads = min(self.n_threads or os.cpu_count() or 1, len(starts))

        def work(s: int) -> None:
            codes[s:s + self.chunk_size] = self._encode_chunk(X[s:s + self.chunk_size], len(self.sizes), prices, plan,
                                                              residual=False)[0]

        if threads <= 1:
            for s in starts:
                work(s)
        else:
            with threadpool_limits(1, "blas"), ThreadPoolExecutor(threads) as pool:
                list(pool.map(work, starts))
        return codes

    def _encode_chunk(self, chunk: np.ndarray, upto: int, prices: bool = False,
                      plan: _Plan | None = None, residual: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Codes int32 [b, upto] of the first ``upto`` levels and the residual float32 [b, dim] they leave.

        One GEMM per level against [-2 C^T; ||c||^2]: the residual carries a constant 1 column, so the
        centroid norms come out of the same product and the scores need no extra pass before the argmin.
        With ``residual=False`` the last level's residual update is skipped (the transform only needs codes)
        and the returned residual is what the levels before it left.
        """
        plan = plan or _Plan(self.codebooks_)
        b, d = chunk.shape
        r_aug = np.empty((b, d + 1), np.float32)
        r_aug[:, :d] = chunk
        r_aug[:, d] = 1.0
        codes = np.empty((b, upto), np.int32)
        last = len(self.sizes) - 1
        for level in range(upto):
            sc = fixed_rows_matmul(r_aug, plan.mats[level])
            if prices and level == last and self.price_keys_.size:
                a = self._priced_argmin(sc, codes[:, :last], plan)
            else:
                a = sc.argmin(axis=1)
            codes[:, level] = a
            if residual or level < upto - 1:
                np.subtract(r_aug, np.take(plan.aug[level], a, axis=0), out=r_aug)
        return codes, np.ascontiguousarray(r_aug[:, :d])

    def _priced_argmin(self, sc: np.ndarray, prefix_codes: np.ndarray, plan: _Plan) -> np.ndarray:
        """argmin over codes of ``sc + price[prefix, code]`` per row: sc float32 [b, K] (overwritten),
        prefix_codes int32 [b, L - 1] -> int64 [b].

        Every priced score gets the same single float32 addition whichever way it is applied; unpriced
        scores get + 0.0 (dense rows) or nothing (sparse), which leaves a finite float unchanged. So both
        paths give the argmin of the plain "add every price, then argmin", bit for bit.
        """
        prefix = self._prefix(prefix_codes)
        if plan.price_rows is not None:
            sc += np.take(plan.price_rows, plan.price_row(prefix), axis=0)
            return sc.argmin(axis=1)
        # sparse prices (a request too small for the dense rows): prices are positive, so where a row's
        # unpriced winner carries no price nothing can overtake it; only the other rows get priced
        k = self.sizes[-1]
        a = sc.argmin(axis=1)
        rows = np.flatnonzero(IdIndex(self.price_keys_, assume_sorted=True, name="price key").contains(prefix * k + a))
        if rows.size:
            sub = sc[rows]
            add_prices(sub, prefix[rows], self.price_keys_, self.price_values_, k)
            a[rows] = sub.argmin(axis=1)
        return a

    def _prefix(self, codes: np.ndarray) -> np.ndarray:
        """Codes of the first levels as one mixed-radix int64 per row (0 when there is no prefix)."""
        key = np.zeros(len(codes), np.int64)
        for level in range(codes.shape[1]):
            key = key * self.sizes[level] + codes[:, level]
        return key

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return sum_codewords(self.codebooks_, codes, self.dim_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "codebooks_"):
            raise QuantizeError("RQKMeans is not fitted: call fit() or RQKMeans.load(path) first")

    # ------------------------------------------------------------ save/load
    def save(self, directory: str | Path) -> None:
        """Write rq.json, rq_codebook_<l>.npy per level and rq_price_{keys,values}.npy (atomic writes)."""
        self._check_fitted()
        d = Path(directory)
        write_codebooks(d, self.codebooks_, self.price_keys_, self.price_values_)
        params = {k: v for k, v in self.get_params().items() if k != "verbose"}  # how it ran, not what it is
        params["sizes"] = [int(k) for k in self.sizes]
        write_json(d / "rq.json", {"params": params, "dim": self.dim_})

    @classmethod
    def load(cls, directory: str | Path) -> RQKMeans:
        d = Path(directory)
        meta = read_json(d / "rq.json")
        if meta is None:
            raise QuantizeError(f"{d / 'rq.json'} is missing: run the 'quantize' stage first")
        model = cls(**meta["params"])
        model.dim_ = int(meta["dim"])
        model.codebooks_, model.price_keys_, model.price_values_ = read_codebooks(d, len(model.sizes))
        return model

    def __repr__(self) -> str:
        return f"RQKMeans({json.dumps(self.get_params(), default=str)})"


def sum_codewords(codebooks: list[np.ndarray], codes: np.ndarray, dim: int) -> np.ndarray:
    """Residual decoding: the sum over levels of each row's codeword, float32 [n, dim], from codes
    int64 [n, L] and one codebook float32 [K_l, dim] per level."""
    out = np.zeros((codes.shape[0], dim), np.float32)
    for level, C in enumerate(codebooks):
        out += C[codes[:, level]]
    return out


def write_codebooks(d: Path, codebooks: list[np.ndarray], price_keys: np.ndarray, price_values: np.ndarray) -> None:
    """rq_codebook_<l>.npy per level and rq_price_{keys,values}.npy under ``d`` (atomic writes)."""
    for level, C in enumerate(codebooks):
        write_npy(d / f"rq_codebook_{level}.npy", C)
    write_npy(d / "rq_price_keys.npy", price_keys)
    write_npy(d / "rq_price_values.npy", price_values)


def read_codebooks(d: Path, n_levels: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """What ``write_codebooks`` wrote: (codebooks, price_keys, price_values)."""
    codebooks = [read_npy(d / f"rq_codebook_{level}.npy") for level in range(n_levels)]
    return codebooks, read_npy(d / "rq_price_keys.npy"), read_npy(d / "rq_price_values.npy")


def _mse(X: np.ndarray, Xhat: np.ndarray) -> float:
    return float(np.mean(np.einsum("ij,ij->i", X - Xhat, X - Xhat)))


def _cluster_sums(a: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums float32 [k, d] and counts int64 [k] of x [n, d] by label a [n] (sort + reduceat)."""
    counts = np.bincount(a, minlength=k)
    sums = np.zeros((k, x.shape[1]), np.float32)
    order = np.argsort(a, kind="stable")
    used = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[used]
    sums[used] = np.add.reduceat(x[order], starts, axis=0)
    return sums, counts
