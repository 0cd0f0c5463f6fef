"""Res-Kmeans-FSQ (QARM V2): L-1 residual k-means levels, then finite scalar quantisation of the last residual.

The first L-1 levels are RQ-Kmeans (``qarm.quant.rq``, unbalanced: balancing acts on the last level).
What they leave, r, goes through a learned projection to m = len(fsq_levels) dimensions, each bounded
and rounded to a fixed number of levels (Mentzer et al., 2023, "Finite Scalar Quantization"): dimension
i takes ``fsq_levels[i]`` values, so the last level has prod(fsq_levels) codes. A linear decoder maps
the rounded point back to the residual; encoder and decoder are trained together on the reconstruction
error, the rounding passed through by the straight-through estimator. Because the grid is fixed rather
than fitted to where residuals are dense, items of one tight cluster are split along the projected
directions instead of all landing on one centroid, which is what lowers collisions.

With ``balanced`` the last level also gets the capacity prices of balanced RQ-Kmeans
(``qarm.quant.balance``): an item's cost for FSQ cell j is the squared distance, in the bounded
projected space, from its point to cell j's grid point (whose argmin is the plain rounding), and
over-full (prefix, cell) pairs are priced until each holds one item or the price cap
(``balance_budget`` x the mean rounding error) is reached. Without prices the code is the rounding
itself, so ``balanced=False`` is V2's FSQ unchanged.

After training, the decoder is refitted by least squares and every used code's row is set to the mean
residual of its items. The decoded grid is the last level's codebook (prod(fsq_levels) x dim), so ``inverse_transform``,
``codebooks_`` and every ``qarm.quant.metrics`` figure work exactly as for ``RQKMeans``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qarm.io import read_json, read_npy, write_json, write_npy
from qarm.quant.balance import add_prices, capacity_prices
from qarm.quant.checks import QuantizeError, check_codes, check_embeddings
from qarm.quant.rq import RQKMeans, fixed_rows_matmul, read_codebooks, sum_codewords, write_codebooks

_EPS = 1e-3


def auto_fsq_levels(n_codes: int) -> list[int]:
    """Per-dimension levels whose product is ``n_codes``: as many 4s as fit, then a 2 or a 3 (FSQ's
    advice is few levels per dimension, several dimensions). 32 -> [4, 4, 2], 64 -> [4, 4, 4]."""
    levels, rest = [], int(n_codes)
    while rest % 4 == 0 and rest > 4:
        levels.append(4)
        rest //= 4
    if rest > 1:
        for p in (4, 3, 2, 5, 7):
            while rest % p == 0 and rest > 1:
                levels.append(p)
                rest //= p
    if rest != 1 or not levels:
        raise QuantizeError(f"cannot split {n_codes} last-level codes into FSQ levels of 2..7: set "
                            f"quantize.rq_fsq_levels explicitly (their product must equal rq_sizes[-1])")
    return sorted(levels, reverse=True)


def _fsq_constants(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """half width, offset and shift of the FSQ bound (even level counts get a half-step offset)."""
    half = (levels - 1) * (1 + _EPS) / 2
    offset = np.where(levels % 2 == 0, 0.5, 0.0)
    shift = np.arctanh(offset / half)
    return half.astype(np.float32), offset.astype(np.float32), shift.astype(np.float32)


class ResKMeansFSQ:
    """Residual k-means levels + an FSQ last level (scikit-learn style; the API of ``RQKMeans``).

    Parameters: ``sizes`` codes per level (the last must equal prod(``fsq_levels``)); ``fsq_levels``
    values per FSQ dimension ([] = ``auto_fsq_levels(sizes[-1])``); ``fsq_epochs``, ``fsq_lr``,
    ``fsq_batch_size`` for the straight-through training; the k-means options of ``RQKMeans`` for the
    first levels; ``chunk_size``; ``seed``.

    Learned: ``codebooks_`` list of float32 [K_l, dim] (the last: per FSQ code, its items' mean residual,
    or the decoded grid point for unused codes); ``enc_w_``
    float32 [dim, m], ``enc_b_`` [m], ``dec_w_`` [m, dim], ``dec_b_`` [dim]; ``levels_`` int64 [m];
    ``dim_``; ``fsq_loss_`` final training MSE; ``price_keys_``/``price_values_`` (empty: no balancing).
    """

    def __init__(self, sizes: Sequence[int] = (256, 256, 256), fsq_levels: Sequence[int] = (), *,
                 fsq_epochs: int = 300, fsq_lr: float = 0.01, fsq_batch_size: int = 4096, n_iter: int = 25,
                 n_init: int = 1, init: str = "kmeans++", max_train_points: int = 500_000,
                 refine_rounds: int = 2, balanced: bool = False, balance_budget: float = 0.2,
                 balance_candidates: int = 32, balance_rounds: int = 30, chunk_size: int = 8192,
                 n_threads: int = 0, seed: int = 0, verbose: bool = False) -> None:
        self.sizes = [int(k) for k in sizes]
        self.fsq_levels = [int(v) for v in fsq_levels]
        self.fsq_epochs, self.fsq_lr, self.fsq_batch_size = fsq_epochs, fsq_lr, fsq_batch_size
        self.n_iter, self.n_init, self.init = n_iter, n_init, init
        self.max_train_points, self.refine_rounds = max_train_points, refine_rounds
        self.balanced, self.balance_budget = bool(balanced), float(balance_budget)
        self.balance_candidates, self.balance_rounds = int(balance_candidates), int(balance_rounds)
        self.chunk_size, self.n_threads, self.seed, self.verbose = chunk_size, n_threads, seed, verbose
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise QuantizeError(f"Res-Kmeans-FSQ needs >= 2 levels of positive sizes (k-means levels + the FSQ "
                                f"level), got rq_sizes={list(sizes)}")

    def _levels(self) -> np.ndarray:
        levels = self.fsq_levels or auto_fsq_levels(self.sizes[-1])
        if min(levels) < 2 or int(np.prod(levels)) != self.sizes[-1]:
            raise QuantizeError(f"rq_fsq_levels {levels} must be >= 2 each with product rq_sizes[-1]="
                                f"{self.sizes[-1]} (equal code budget), product is {int(np.prod(levels))}")
        return np.asarray(levels, np.int64)

    # ------------------------------------------------------------------ fit
    def fit(self, X: np.ndarray) -> ResKMeansFSQ:
        """Fit the k-means levels, then the FSQ encoder/decoder on their residual of X float32 [n, dim]."""
        import torch

        X = check_embeddings(X, "ResKMeansFSQ.fit(X)", allow_zero=True)
        self.levels_ = self._levels()
        n, self.dim_ = X.shape
        self._coarse = RQKMeans(self.sizes[:-1], n_iter=self.n_iter, n_init=self.n_init, init=self.init,
                                max_train_points=self.max_train_points, refine_rounds=self.refine_rounds,
                                balanced=False, chunk_size=self.chunk_size, n_threads=self.n_threads,
                                seed=self.seed, verbose=self.verbose).fit(X)
        r = X - self._coarse._decode(self._coarse.transform(X))
        m = len(self.levels_)
        half, offset, shift = (torch.from_numpy(a) for a in _fsq_constants(self.levels_))
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            enc, dec = torch.nn.Linear(self.dim_, m), torch.nn.Linear(m, self.dim_)
            # start the projection on the residual's principal directions, scaled so the bound is not saturated
            _, s, vt = np.linalg.svd(r - r.mean(0), full_matrices=False)
            scale = np.maximum(s[:m] / np.sqrt(max(n, 1)), 1e-6)
            with torch.no_grad():
                enc.weight.copy_(torch.from_numpy((vt[:m] / scale[:, None]).astype(np.float32)))
                enc.bias.copy_(-enc.weight @ torch.from_numpy(r.mean(0)))
            opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=self.fsq_lr)
            rt = torch.from_numpy(r)
            bs = max(1, min(self.fsq_batch_size, n))
            loss = torch.tensor(0.0)
            norm = torch.from_numpy((self.levels_ // 2).astype(np.float32))  # rounded digits -> [-1, 1]
            for _ in range(self.fsq_epochs):
                perm = torch.randperm(n, generator=gen)
                for s0 in range(0, n, bs):
                    b = rt[perm[s0:s0 + bs]]
                    bounded = torch.tanh(enc(b) + shift) * half - offset
                    q = bounded + (torch.round(bounded) - bounded).detach()  # straight-through estimator
                    loss = torch.mean(torch.sum((dec(q / norm) - b) ** 2, 1))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            self.fsq_loss_ = float(loss.detach())
            self.enc_w_ = enc.weight.detach().numpy().T.astype(np.float32).copy()
            self.enc_b_ = enc.bias.detach().numpy().astype(np.float32).copy()
            self.dec_w_ = dec.weight.detach().numpy().T.astype(np.float32).copy()
            self.dec_b_ = dec.bias.detach().numpy().astype(np.float32).copy()
        # The STE-trained decoder is a means to train the encoder; given the final codes, refit it by least
        # squares (the best linear decoder), and give every used code the mean residual of its items (the
        # best reconstruction for that assignment, as a k-means update would), so the FSQ level can only
        # lower the error the k-means levels leave. Unused codes keep the linear decoder's point.
        last = self._fsq_codes(r)
        digits = np.stack(np.unravel_index(last, tuple(self.levels_)), 1)
        q = np.hstack([self._normalised(digits), np.ones((n, 1), np.float32)])
        sol = np.linalg.lstsq(q.astype(np.float64), r.astype(np.float64), rcond=None)[0]
        self.dec_w_, self.dec_b_ = sol[:-1].astype(np.float32), sol[-1].astype(np.float32)
        grid = self._grid_codebook()
        counts = np.bincount(last, minlength=len(grid))
        sums = np.zeros_like(grid, dtype=np.float64)
        np.add.at(sums, last, r)
        used = counts > 0
        grid[used] = (sums[used] / counts[used, None]).astype(np.float32)
        self.codebooks_ = [C.copy() for C in self._coarse.codebooks_] + [grid]
        self.price_keys_ = np.empty(0, np.int64)
        self.price_values_ = np.empty(0, np.float32)
        if self.balanced:
            self._fit_prices(X)
        return self

    def _fit_prices(self, X: np.ndarray) -> None:
        """Capacity-capped FSQ level on every fitted item, as ``RQKMeans._fit_prices`` does for k-means."""
        def chunks():
            for s in range(0, len(X), self.chunk_size):
                codes, r = self._coarse._encode_chunk(X[s:s + self.chunk_size], upto=len(self.sizes) - 1)
                sc = self._cell_costs(r)
                yield self._coarse._prefix(codes), sc, sc.min(axis=1)

        self.price_keys_, self.price_values_ = capacity_prices(chunks(), len(X), self.sizes[-1],
                                                               self.balance_candidates, self.balance_budget,
                                                               self.balance_rounds, self.verbose)

    def _cell_costs(self, r: np.ndarray) -> np.ndarray:
        """Squared distance, in the bounded projected space, from each residual's point to every FSQ
        cell's grid point: float32 [n, prod(levels)]; its argmin is the plain rounding."""
        half, offset, shift = _fsq_constants(self.levels_)
        # fixed-row GEMM blocks: an item's costs, hence its priced code, never depend on its batch
        bounded = np.tanh(fixed_rows_matmul(r, self.enc_w_) + self.enc_b_ + shift) * half - offset  # [n, m]
        grid = np.stack(np.unravel_index(np.arange(self.sizes[-1]), tuple(self.levels_)), 1) - self.levels_ // 2
        cost = np.zeros((len(r), len(grid)), np.float32)
        for i in range(len(self.levels_)):  # separable: one [n, K] term per dimension
            cost += (bounded[:, i:i + 1] - grid[None, :, i].astype(np.float32)) ** 2
        return cost

    def _grid_codebook(self) -> np.ndarray:
        """Decoded reconstruction of every FSQ code, float32 [prod(levels), dim] (code = mixed radix)."""
        grid = np.stack(np.unravel_index(np.arange(int(np.prod(self.levels_))), tuple(self.levels_)), 1)
        return self._decode_fsq(grid)

    def _normalised(self, digits: np.ndarray) -> np.ndarray:
        """Digits int [n, m] in [0, L_i) -> the rounded FSQ point scaled to about [-1, 1], float32 [n, m]."""
        half = (self.levels_ // 2).astype(np.float32)
        return (digits.astype(np.float32) - half) / half

    def _decode_fsq(self, digits: np.ndarray) -> np.ndarray:
        return self._normalised(digits) @ self.dec_w_ + self.dec_b_

    def _fsq_codes(self, r: np.ndarray) -> np.ndarray:
        """Residuals float32 [n, dim] -> last-level codes int32 [n] (mixed radix of the rounded digits)."""
        half, offset, shift = _fsq_constants(self.levels_)
        bounded = np.tanh(r @ self.enc_w_ + self.enc_b_ + shift) * half - offset
        digits = (np.round(bounded) + (self.levels_ // 2)).astype(np.int64)
        digits = np.clip(digits, 0, self.levels_ - 1)  # the (1 + eps) margin can round one step out
        return np.ravel_multi_index(tuple(digits.T), tuple(self.levels_)).astype(np.int32)

    # ------------------------------------------------------------ transform
    def transform(self, X: np.ndarray) -> np.ndarray:
        """Codes int32 [n, L] of X float32 [n, dim]: k-means levels by nearest centroid, then FSQ."""
        self._check_fitted()
        X = check_embeddings(X, "ResKMeansFSQ.transform(X)", dim=self.dim_, allow_zero=True)
        out = np.empty((len(X), len(self.sizes)), np.int32)
        for s in range(0, len(X), self.chunk_size):
            chunk = X[s:s + self.chunk_size]
            codes, r = self._coarse._encode_chunk(chunk, upto=len(self.sizes) - 1)
            out[s:s + len(chunk), :-1] = codes
            if self.price_keys_.size:  # balanced: the priced argmin over the cells
                sc = self._cell_costs(r)
                add_prices(sc, self._coarse._prefix(codes), self.price_keys_, self.price_values_, self.sizes[-1])
                out[s:s + len(chunk), -1] = sc.argmin(axis=1)
            else:
                out[s:s + len(chunk), -1] = self._fsq_codes(r)
        return out

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)

    def inverse_transform(self, codes: np.ndarray) -> np.ndarray:
        """Reconstruction float32 [n, dim] = coarse centroids + the decoded FSQ code, from codes int [n, L]."""
        self._check_fitted()
        codes = check_codes(codes, self.sizes)
        return sum_codewords(self.codebooks_, codes, self.dim_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "codebooks_"):
            raise QuantizeError("ResKMeansFSQ is not fitted: call fit() or ResKMeansFSQ.load(path) first")

    # ------------------------------------------------------------ save/load
    def save(self, directory: str | Path) -> None:
        """Write rq.json (method "fsq"), rq_codebook_<l>.npy per level and fsq_{enc,dec}_{w,b}.npy (atomic)."""
        self._check_fitted()
        d = Path(directory)
        write_codebooks(d, self.codebooks_, self.price_keys_, self.price_values_)
        for name in ("enc_w", "enc_b", "dec_w", "dec_b"):
            write_npy(d / f"fsq_{name}.npy", getattr(self, f"{name}_"))
        write_json(d / "rq.json", {"method": "fsq", "params": self.get_params(), "dim": self.dim_,
                                   "levels": self.levels_.tolist(), "fsq_loss": self.fsq_loss_})

    @classmethod
    def load(cls, directory: str | Path) -> ResKMeansFSQ:
        d = Path(directory)
        meta = read_json(d / "rq.json")
        if meta is None:
            raise QuantizeError(f"{d / 'rq.json'} is missing: run the 'quantize' stage first")
        if meta.get("method") != "fsq":
            raise QuantizeError(f"{d / 'rq.json'} holds an RQ-Kmeans model, not Res-Kmeans-FSQ: use load_quantizer")
        model = cls(**meta["params"])
        model.dim_ = int(meta["dim"])
        model.levels_ = np.asarray(meta["levels"], np.int64)
        model.fsq_loss_ = float(meta.get("fsq_loss", float("nan")))
        model.codebooks_, model.price_keys_, model.price_values_ = read_codebooks(d, len(model.sizes))
        for name in ("enc_w", "enc_b", "dec_w", "dec_b"):
            setattr(model, f"{name}_", read_npy(d / f"fsq_{name}.npy"))
        model._coarse = RQKMeans(model.sizes[:-1], balanced=False, chunk_size=model.chunk_size)
        model._coarse.dim_, model._coarse.codebooks_ = model.dim_, model.codebooks_[:-1]
        model._coarse.price_keys_, model._coarse.price_values_ = np.empty(0, np.int64), np.empty(0, np.float32)
        return model

    def get_params(self) -> dict:
        return {"sizes": self.sizes, "fsq_levels": self.fsq_levels, "fsq_epochs": self.fsq_epochs,
                "fsq_lr": self.fsq_lr, "fsq_batch_size": self.fsq_batch_size, "n_iter": self.n_iter,
                "n_init": self.n_init, "init": self.init, "max_train_points": self.max_train_points,
                "refine_rounds": self.refine_rounds, "balanced": self.balanced, "balance_budget": self.balance_budget,
                "balance_candidates": self.balance_candidates, "balance_rounds": self.balance_rounds,
                "chunk_size": self.chunk_size, "n_threads": self.n_threads, "seed": self.seed}

    def __repr__(self) -> str:
        return f"ResKMeansFSQ({json.dumps(self.get_params())})"


def load_quantizer(directory: str | Path) -> RQKMeans | ResKMeansFSQ:
    """The RQ model saved in ``directory`` (quant/), whichever method fitted it."""
    meta = read_json(Path(directory) / "rq.json")
    if meta is not None and meta.get("method") == "fsq":
        return ResKMeansFSQ.load(directory)
    return RQKMeans.load(directory)
