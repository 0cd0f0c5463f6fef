"""U2I two-tower retrieval: the behaviour space that trigger mining measures similarity in.

User tower: attention (or mean) pooling over the item-id embeddings of the user's recent positives,
concatenated with a user-id embedding, through a small MLP. Item tower: the item-id embedding.
Both L2-normalised; score = cosine / temperature. Trained with in-batch sampled softmax (the other
targets of the batch are the negatives) and the log-Q correction: popular items appear as in-batch
negatives more often, so their logit is lowered by log(sampling probability) (Yi et al., RecSys'19).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from qarm.io import save_torch
from qarm.pairs.triggers import padded_windows, sort_by_user_time, window_bounds


class TwoTower(nn.Module):
    """Item row ``n_items`` is the history padding; user row 0 is "unknown user"."""

    def __init__(self, n_users: int, n_items: int, dim: int, pooling: str = "attention") -> None:
        super().__init__()
        self.n_items, self.pooling = n_items, pooling
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
        self.user_emb = nn.Embedding(n_users + 1, dim)
        self.query = nn.Linear(dim, dim)
        self.user_mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim))
        nn.init.normal_(self.item_emb.weight, std=0.1)
        nn.init.normal_(self.user_emb.weight, std=0.1)

    def items(self, item: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.item_emb(item), dim=-1)

    def users(self, user: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        """user [B] row ids, hist [B, H] item rows (``n_items`` = padding) -> [B, dim] unit vectors."""
        h, u = self.item_emb(hist), self.user_emb(user)
        mask = hist != self.n_items
        if self.pooling == "attention":
            att = torch.einsum("bhd,bd->bh", h, self.query(u)) / math.sqrt(h.shape[-1])
        else:
            att = torch.zeros(mask.shape, device=h.device)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)  # empty history -> zeros
        pooled = torch.einsum("bh,bhd->bd", att, h)
        return F.normalize(self.user_mlp(torch.cat([pooled, u], -1)), dim=-1)


class U2IRetriever:
    """Train and query the two-tower model on positive (user, item, time) events.

    Parameters mirror ``PairsConfig.u2i_*``. Learned: ``model_``, ``user_index_`` (sorted raw user ids;
    model row = position + 1), ``item_counts_`` int64 [n_items] training positives per item,
    ``loss_history_`` mean loss per epoch, ``epochs_done_``.
    """

    def __init__(self, n_items: int, dim: int = 64, history: int = 50, epochs: int = 10, batch_size: int = 512,
                 lr: float = 3e-3, temperature: float = 0.05, logq: bool = True,
                 pooling: Literal["attention", "mean"] = "attention", seed: int = 0, progress: bool = True) -> None:
        self.n_items, self.dim, self.history, self.epochs = n_items, dim, history, epochs
        self.batch_size, self.lr, self.temperature, self.logq = batch_size, lr, temperature, logq
        self.pooling, self.seed, self.progress = pooling, seed, progress

    def fit(self, user: np.ndarray, item: np.ndarray, time: np.ndarray, checkpoint: Path | None = None,
            checkpoint_key: str = "") -> "U2IRetriever":
        """user, item, time: int [n] training positives (item = row in the catalogue, < n_items).

        Each event is one example: target = its item, history = the user's latest ``history`` positives
        strictly before it. With ``checkpoint``, the state is saved after every epoch and a run with the
        same ``checkpoint_key`` resumes from it.
        """
        torch.manual_seed(self.seed)
        user, item, time = (np.asarray(a, dtype=np.int64) for a in (user, item, time))
        self.user_index_ = np.unique(user)
        self.item_counts_ = np.bincount(item, minlength=self.n_items).astype(np.int64)
        order = sort_by_user_time(user, time)
        s_item = item[order]
        lo, hi = window_bounds(user[order], time[order], self.history)
        hist = padded_windows(s_item, lo, hi, self.history, pad=-1)
        hist[hist < 0] = self.n_items
        users_t = torch.from_numpy(self.user_rows(user[order]))
        hist_t, target_t = torch.from_numpy(hist), torch.from_numpy(s_item)
        log_q = torch.from_numpy(np.log(np.maximum(self.item_counts_, 1) / max(len(item), 1))).float()

        self.model_ = TwoTower(len(self.user_index_), self.n_items, self.dim, self.pooling)
        opt = torch.optim.Adam(self.model_.parameters(), lr=self.lr)
        self.loss_history_, self.epochs_done_ = [], 0
        if checkpoint is not None and Path(checkpoint).exists():
            state = torch.load(checkpoint, weights_only=False)
            if state.get("key") == checkpoint_key:
                self.model_.load_state_dict(state["model"])
                opt.load_state_dict(state["optim"])
                self.loss_history_, self.epochs_done_ = state["loss_history"], state["epoch"]
        n = len(target_t)
        for epoch in range(self.epochs_done_, self.epochs):
            # per-epoch permutation from (seed, epoch): a resumed run sees the same batches
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
            self.model_.train()
            total, steps = 0.0, 0
            bar = tqdm(range(0, n, self.batch_size), desc=f"u2i epoch {epoch + 1}/{self.epochs}",
                       disable=not self.progress, mininterval=2.0, leave=False)
            for start in bar:
                b = perm[start:start + self.batch_size]
                loss = self._batch_loss(users_t[b], hist_t[b], target_t[b], log_q)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, steps = total + loss.item(), steps + 1
            self.loss_history_.append(total / max(steps, 1))
            self.epochs_done_ = epoch + 1
            if checkpoint is not None:
                save_torch(checkpoint, {"key": checkpoint_key, "epoch": self.epochs_done_, "model": self.model_.state_dict(),
                                        "optim": opt.state_dict(), "loss_history": self.loss_history_})
        self.model_.eval()
        return self

    def _batch_loss(self, user: torch.Tensor, hist: torch.Tensor, target: torch.Tensor,
                    log_q: torch.Tensor) -> torch.Tensor:
        logits = self.model_.users(user, hist) @ self.model_.items(target).T / self.temperature
        if self.logq:
            logits = logits - log_q[target][None, :]
        # another row with the same target is not a negative
        same = (target[:, None] == target[None, :]) & ~torch.eye(len(target), dtype=torch.bool)
        logits = logits.masked_fill(same, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(target)))

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Model rows of raw user ids (0 for users never seen in training). Returns int64 [n]."""
        pos = np.searchsorted(self.user_index_, user_ids)
        pos = np.minimum(pos, max(len(self.user_index_) - 1, 0))
        known = len(self.user_index_) > 0
        hit = (self.user_index_[pos] == user_ids) if known else np.zeros(len(user_ids), dtype=bool)
        return np.where(hit, pos + 1, 0).astype(np.int64)

    @torch.no_grad()
    def item_embeddings(self) -> np.ndarray:
        """float32 [n_items, dim], L2-normalised; zero rows for items with no training positive."""
        emb = self.model_.items(torch.arange(self.n_items)).numpy().astype(np.float32)
        emb[self.item_counts_ == 0] = 0.0
        return emb

    @torch.no_grad()
    def user_embeddings(self, user_ids: np.ndarray, hist: np.ndarray) -> np.ndarray:
        """user_ids int [n] raw ids; hist int [n, H] item rows (-1 = padding). Returns float32 [n, dim]."""
        hist = np.where(hist < 0, self.n_items, hist)
        out = self.model_.users(torch.from_numpy(self.user_rows(user_ids)), torch.from_numpy(hist))
        return out.numpy().astype(np.float32)


def recall_at_k(scores: np.ndarray, targets: np.ndarray, seen: list[np.ndarray], ks: tuple[int, ...],
                batch: int = 4096) -> dict[int, float]:
    """Share of rows whose target is in the top-k of ``scores`` over the whole catalogue.

    scores: float [n, n_items]; targets: int [n] item rows; seen: per row, int item rows excluded
    from the ranking (the user's training positives; the target itself is never excluded).
    Returns {k: recall}.
    """
    kmax = max(ks)
    hits = {k: 0 for k in ks}
    for start in range(0, len(targets), batch):
        s = np.array(scores[start:start + batch], dtype=np.float32)
        t = targets[start:start + batch]
        excl = seen[start:start + batch]
        rows = np.repeat(np.arange(len(excl)), [len(e) for e in excl])
        cols = np.concatenate(excl).astype(np.int64) if len(excl) else np.zeros(0, dtype=np.int64)
        keep = cols != t[rows]
        s[rows[keep], cols[keep]] = -np.inf
        top = torch.topk(torch.from_numpy(s), min(kmax, s.shape[1]), dim=1).indices.numpy()
        for k in ks:
            hits[k] += int((top[:, :k] == t[:, None]).any(axis=1).sum())
    return {k: hits[k] / max(len(targets), 1) for k in ks}
