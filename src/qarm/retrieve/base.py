"""What the two learned retrievers share: device/threads handling, fingerprints, valid scoring."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator

from qarm.distributed import resolve_device
from qarm.errors import DataError
from qarm.retrieve.evaluate import recall_ndcg, target_ranks
from qarm.sample import sample_rows


class SequenceRetriever(BaseEstimator):
    """Base of the sequence retrievers: ``fit(..., train_seqs, valid_hist, valid_target)`` and
    ``recommend(histories) -> int64 [U, k]`` item rows, best first (-1 = empty slot).

    Both take the same parameters, so that a comparison gives them the same budget: ``max_len``
    history items read; transformer ``dim``/``layers``/``heads``/``dropout``; ``epochs``,
    ``patience`` (valid Recall@10), ``batch_size`` windows, ``lr``, ``weight_decay``; ``beam_size``
    (generative decoding only); ``exclude_history``; ``valid_users`` (0 = all);
    ``eval_batch_users``; ``windows_per_user`` (0 = every window); ``device``; ``seed``; ``verbose``.
    """

    def __init__(self, max_len: int = 50, dim: int = 64, layers: int = 2, heads: int = 2, dropout: float = 0.2,
                 epochs: int = 30, patience: int = 5, batch_size: int = 128, lr: float = 1e-3,
                 weight_decay: float = 0.0, beam_size: int = 20, exclude_history: bool = True,
                 valid_users: int = 0, eval_batch_users: int = 128, windows_per_user: int = 0,
                 device: str = "cpu", seed: int = 0, verbose: bool = False) -> None:
        self.max_len, self.dim, self.layers, self.heads, self.dropout = max_len, dim, layers, heads, dropout
        self.epochs, self.patience, self.batch_size, self.lr = epochs, patience, batch_size, lr
        self.weight_decay, self.beam_size, self.exclude_history = weight_decay, beam_size, exclude_history
        self.valid_users, self.eval_batch_users = valid_users, eval_batch_users
        self.windows_per_user = windows_per_user
        self.device, self.seed, self.verbose = device, seed, verbose

    def _setup(self) -> torch.device:
        self.device_ = resolve_device(self.device, "retrieve.device")
        return self.device_

    def _fingerprint(self, *arrays: np.ndarray | Sequence[np.ndarray]) -> str:
        """Hash of the parameters and the training data: a checkpoint resumes only the same fit."""
        # the budget (epochs, patience) and where it runs do not change epoch k's weights: a longer
        # budget resumes from the same checkpoint
        params = {k: v for k, v in self.get_params().items()
                  if k not in ("epochs", "patience", "verbose", "device", "eval_batch_users")}
        h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
        for a in arrays:
            for part in (a if isinstance(a, list) else [a]):
                arr = np.ascontiguousarray(part)
                h.update(str(arr.shape).encode())
                h.update(arr.tobytes())
        return h.hexdigest()[:20]

    def _valid_fn(self, valid_hist: list[np.ndarray] | None, valid_target: np.ndarray | None):
        """Recall@10 over the valid users (a seeded sample of ``valid_users`` when > 0)."""
        if valid_hist is None or valid_target is None or len(valid_target) == 0:
            return lambda: 0.0
        rows = sample_rows(len(valid_target), self.valid_users or 0, self.seed)
        hist = [valid_hist[i] for i in rows]
        target = np.asarray(valid_target)[rows]

        def score() -> float:
            return recall_ndcg(target_ranks(self.recommend(hist, k=10), target), [10])["recall@10"]
        return score

    @staticmethod
    def _check_seqs(seqs: list[np.ndarray], n_items: int, what: str) -> None:
        for i, s in enumerate(seqs):
            s = np.asarray(s)
            if s.size and (s.min() < 0 or s.max() >= n_items):
                raise DataError(f"{what}[{i}] holds item rows outside [0, {n_items})")

    def _banned(self, histories: list[np.ndarray], n_items: int) -> torch.Tensor:
        """bool [U, n_items]: the items each user already has (never recommended when exclude_history)."""
        banned = torch.zeros(len(histories), n_items, dtype=torch.bool)
        if self.exclude_history:
            for i, h in enumerate(histories):
                banned[i, torch.from_numpy(np.asarray(h, np.int64))] = True
        return banned
