"""U2I two-tower retrieval: the behaviour space that trigger mining measures similarity in.

User tower: attention (or mean) pooling over the item-id embeddings of the user's recent positives,
with a learned per-position recency bias on the pooling weights (a time decay), concatenated with a
user-id embedding, through a small MLP. Item tower: the item-id embedding. Both L2-normalised;
score = cosine / temperature + a learned per-item bias.

Training is sampled softmax: each event's target against the other targets of the batch plus
``n_negatives`` items drawn from ``count ** neg_alpha`` (mixed negative sampling, Yang et al.
WWW'20). The log-Q correction subtracts log(expected appearances of a candidate in one batch):
popular items are negatives more often, and without it their logits are pushed down too far
(Yi et al., RecSys'19). With the correction, the item bias learns the popularity prior the softmax
over the whole catalogue needs, while the cosine part (the only part trigger mining reads) is left
to the personal signal. User-id dropout trains the "unknown user" row, which is all a user that
appears after the training period has. ``history_gap`` ends each training history a random 0..gap
positives before its target, so the model learns to predict further ahead than the very next click
(evaluation asks for the first positive after the whole training period).

Retrieval scores use ``score_temperature``: the cosine was trained to pick the very next click, and
for the first click after a long gap (evaluation, serving) it is trusted less against the
popularity bias (measured in docs/pairs.md). Trigger mining reads the cosine alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from tqdm.auto import tqdm

from qarm.distributed import check_device, data_parallel, resolve_device, shard, world
from qarm.errors import ConfigError
from qarm.io import save_torch
from qarm.lookup import IdIndex
from qarm.optim import JointOptimizer, adam_with_sparse_tables
from qarm.pairs.history import Histories

POOLINGS = ("attention", "mean")


class TwoTower(nn.Module):
    """Item row ``n_items`` is the history padding; user row 0 is "unknown user"."""

    def __init__(self, n_users: int, n_items: int, dim: int, pooling: str = "attention", history: int = 50,
                 item_bias: bool = True, recency: bool = True, sparse: bool = False) -> None:
        super().__init__()
        self.n_items, self.pooling = n_items, pooling
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=n_items, sparse=sparse)
        self.user_emb = nn.Embedding(n_users + 1, dim, sparse=sparse)
        self.query = nn.Linear(dim, dim)
        self.user_mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim))
        # slot h of the history (latest last) adds recency[h] to its pooling logit
        self.recency = nn.Parameter(torch.zeros(history)) if recency else None
        self.bias = nn.Parameter(torch.zeros(n_items)) if item_bias else None
        nn.init.normal_(self.item_emb.weight, std=0.1)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        with torch.no_grad():
            self.item_emb.weight[n_items].zero_()

    def items(self, item: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.item_emb(item), dim=-1)

    def item_bias(self, item: torch.Tensor) -> torch.Tensor:
        return self.bias[item] if self.bias is not None else torch.zeros(item.shape, device=item.device)

    def users(self, user: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        """user [B] row ids, hist [B, H] item rows (``n_items`` = padding) -> [B, dim] unit vectors."""
        h, u = self.item_emb(hist), self.user_emb(user)
        mask = hist != self.n_items
        if self.pooling == "attention":
            att = torch.einsum("bhd,bd->bh", h, self.query(u)) / math.sqrt(h.shape[-1])
        else:
            att = torch.zeros(mask.shape, device=h.device)
        if self.recency is not None:
            att = att + self.recency[-hist.shape[1]:]
        att = att.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)  # empty history -> zeros
        pooled = torch.einsum("bh,bhd->bd", att, h)
        return F.normalize(self.user_mlp(torch.cat([pooled, u], -1)), dim=-1)

    def forward(self, user: torch.Tensor, hist: torch.Tensor, cand: torch.Tensor, temperature: float) -> torch.Tensor:
        """Logits [B, C] of users (user [B], hist [B, H]) against candidate item rows cand [C]:
        cosine / temperature + item bias. (The training step goes through here, so DDP syncs it.)"""
        return self.users(user, hist) @ self.items(cand).T / temperature + self.item_bias(cand)[None, :]


class U2IRetriever(BaseEstimator):
    """Train and query the two-tower model on positive (user, item, time) events.

    Parameters mirror ``PairsConfig.u2i_*`` and are validated in ``fit``. Learned: ``model_``,
    ``user_index_`` (IdIndex of raw user ids; model row = position + 1), ``item_counts_`` int64
    [n_items] training positives per item, ``loss_history_`` mean loss per epoch, ``epochs_done_``,
    ``device_``.
    """

    def __init__(self, n_items: int, dim: int = 64, history: int = 50, epochs: int = 10, batch_size: int = 512,
                 lr: float = 3e-3, temperature: float = 0.05, logq: bool = True,
                 pooling: Literal["attention", "mean"] = "attention", item_bias: bool = True,
                 recency: bool = True, user_dropout: float = 0.0, n_negatives: int = 0, neg_alpha: float = 0.0,
                 history_gap: int = 0, score_temperature: float | None = None, weight_decay: float = 0.0,
                 sparse: bool = False, device: str = "cpu", seed: int = 0, progress: bool = True) -> None:
        self.n_items = n_items
        self.dim = dim
        self.history = history
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.temperature = temperature
        self.logq = logq
        self.pooling = pooling
        self.item_bias = item_bias
        self.recency = recency
        self.user_dropout = user_dropout
        self.n_negatives = n_negatives
        self.neg_alpha = neg_alpha
        self.history_gap = history_gap
        self.score_temperature = score_temperature
        self.weight_decay = weight_decay
        self.sparse = sparse
        self.device = device
        self.seed = seed
        self.progress = progress

    def _validate(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"pairs.u2i_{name}: {getattr(self, name)!r} {what}")

        need(isinstance(self.n_items, (int, np.integer)) and self.n_items >= 1, "n_items", "must be an int >= 1")
        for name in ("dim", "history", "batch_size"):
            need(isinstance(getattr(self, name), (int, np.integer)) and getattr(self, name) >= 1, name,
                 "must be an int >= 1")
        need(isinstance(self.epochs, (int, np.integer)) and self.epochs >= 0, "epochs", "must be an int >= 0")
        for name in ("n_negatives", "history_gap"):
            need(isinstance(getattr(self, name), (int, np.integer)) and getattr(self, name) >= 0, name,
                 "must be an int >= 0")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.temperature > 0, "temperature", "must be > 0")
        need(self.score_temperature is None or self.score_temperature > 0, "score_temperature", "must be > 0 or None")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(not (self.sparse and self.weight_decay), "weight_decay",
             "must be 0 with pairs.u2i_sparse (row-wise Adam has no weight decay)")
        need(0.0 <= self.user_dropout < 1.0, "user_dropout", "must be in [0, 1)")
        need(0.0 <= self.neg_alpha <= 1.0, "neg_alpha", "must be in [0, 1]")
        need(self.pooling in POOLINGS, "pooling", f"is not one of {', '.join(POOLINGS)}")
        check_device(self.device, "pairs.device")

    def fit(self, user: np.ndarray, item: np.ndarray, time: np.ndarray, checkpoint: Path | None = None,
            checkpoint_key: str = "") -> "U2IRetriever":
        """user, item, time: int [n] training positives (item = row in the catalogue, < n_items).

        Each event is one example: target = its item, history = the user's latest ``history`` positives
        strictly before it (materialised per batch from the CSR ``Histories``). With ``checkpoint``, the
        state is saved after every epoch and a run with the same ``checkpoint_key`` resumes from it.
        Under torch.distributed each rank trains on its shard of every batch (gradients averaged by DDP).
        """
        self._validate()
        torch.manual_seed(self.seed)
        user, item, time = (np.asarray(a, dtype=np.int64) for a in (user, item, time))
        if len(item) and (item.min() < 0 or item.max() >= self.n_items):
            raise ConfigError(f"U2IRetriever: item rows must lie in [0, {self.n_items}), got {item.min()}..{item.max()}")
        self.device_ = resolve_device(self.device, "pairs.device")
        self.user_index_ = IdIndex(np.unique(user), assume_sorted=True, name="user_id")
        self.item_counts_ = np.bincount(item, minlength=self.n_items).astype(np.int64)
        hist = Histories.build(user, item, time, self.history)
        users_t = torch.from_numpy(self.user_rows(user[hist.order]))
        target_t = torch.from_numpy(hist.items.astype(np.int64))
        dev = self.device_
        p_pos, p_neg = self._candidate_probs()
        neg_cdf = torch.from_numpy(np.cumsum(p_neg)) if self.n_negatives else None
        rank, size = world()
        # expected appearances of each item among one step's candidates (this rank's share of the
        # batch's targets + the shared negatives): the log-Q of mixed sampling
        expected = self.batch_size / size * p_pos + self.n_negatives * p_neg
        log_q = torch.from_numpy(np.log(np.maximum(expected, 1e-12))).float().to(dev)

        self.model_ = TwoTower(len(self.user_index_), self.n_items, self.dim, self.pooling, self.history,
                               self.item_bias, self.recency, self.sparse).to(dev)
        if self.item_bias:
            with torch.no_grad():  # start from the popularity prior: log(share of positives), centred
                prior = np.log(np.maximum(self.item_counts_, 0.5) / max(len(item), 1))
                self.model_.bias.copy_(torch.from_numpy(prior - prior[self.item_counts_ > 0].mean()
                                                        if (self.item_counts_ > 0).any() else prior).float())
        net, sync_gradients = data_parallel(self.model_, dev)
        opt = self._optimizer()
        self.loss_history_, self.epochs_done_ = [], 0
        if checkpoint is not None and Path(checkpoint).exists():
            state = torch.load(checkpoint, weights_only=False, map_location=dev)
            if state.get("key") == checkpoint_key:
                self.model_.load_state_dict(state["model"])
                opt.load_state_dict(state["optim"])
                self.loss_history_, self.epochs_done_ = state["loss_history"], state["epoch"]
        n = len(target_t)
        for epoch in range(self.epochs_done_, self.epochs):
            # every draw of an epoch from (seed, epoch): a resumed run sees the same batches
            gen = torch.Generator().manual_seed(self.seed * 1000 + epoch)
            perm = torch.randperm(n, generator=gen)
            self.model_.train()
            total, steps = 0.0, 0
            bar = tqdm(range(0, n, self.batch_size), desc=f"u2i epoch {epoch + 1}/{self.epochs}",
                       disable=not self.progress, mininterval=2.0, leave=False)
            for start in bar:
                b = perm[start:start + self.batch_size]
                negs = (torch.searchsorted(neg_cdf, torch.rand(self.n_negatives, generator=gen, dtype=torch.float64))
                        .clamp_(max=self.n_items - 1) if neg_cdf is not None else None)
                drop = torch.rand(len(b), generator=gen) < self.user_dropout if self.user_dropout else None
                gap = (torch.randint(0, self.history_gap + 1, (len(b),), generator=gen).numpy()
                       if self.history_gap else None)
                if size > 1:  # this rank's rows of the batch (all ranks drew the same batch and negatives)
                    mine = shard(len(b))
                    b, drop = b[mine], (drop[mine] if drop is not None else None)
                    gap = gap[mine] if gap is not None else None
                u = users_t[b]
                if drop is not None:
                    u = torch.where(drop, torch.zeros_like(u), u)
                h = torch.from_numpy(hist.windows(b.numpy(), pad=self.n_items, skip=gap))
                loss = self._batch_loss(net, u.to(dev), h.to(dev), target_t[b].to(dev),
                                        negs.to(dev) if negs is not None else None, log_q)
                opt.zero_grad()
                loss.backward()
                sync_gradients()
                opt.step()
                total, steps = total + loss.item(), steps + 1
            self.loss_history_.append(total / max(steps, 1))
            self.epochs_done_ = epoch + 1
            if checkpoint is not None and rank == 0:
                save_torch(checkpoint, {"key": checkpoint_key, "epoch": self.epochs_done_, "model": self.model_.state_dict(),
                                        "optim": opt.state_dict(), "loss_history": self.loss_history_})
        self.model_.eval()
        return self

    def _optimizer(self) -> "torch.optim.Optimizer | JointOptimizer":
        """Adam over every parameter; with ``sparse``, the two embedding tables get row-wise (lazy)
        Adam instead, which updates only the rows a batch touched: a step then costs O(batch), not
        O(users + items) (dense Adam rewrites every row of both tables every step)."""
        tables = [self.model_.item_emb.weight, self.model_.user_emb.weight] if self.sparse else []
        return adam_with_sparse_tables(list(self.model_.parameters()), tables, self.lr, self.weight_decay)

    def _candidate_probs(self) -> tuple[np.ndarray, np.ndarray]:
        """(p_pos, p_neg) float64 [n_items]: chance that one in-batch target / one sampled negative is item j."""
        counts = self.item_counts_.astype(np.float64)
        p_pos = counts / max(counts.sum(), 1.0)
        w = np.where(counts > 0, np.maximum(counts, 1.0) ** self.neg_alpha, 0.0)  # never-positive items are never sampled
        p_neg = w / w.sum() if w.sum() > 0 else w
        return p_pos, p_neg

    def _batch_loss(self, net: nn.Module, user: torch.Tensor, hist: torch.Tensor, target: torch.Tensor,
                    negs: torch.Tensor | None, log_q: torch.Tensor) -> torch.Tensor:
        """Sampled softmax of [B] targets over the batch's targets (+ shared sampled negatives)."""
        cand = target if negs is None else torch.cat([target, negs])
        logits = net(user, hist, cand, self.temperature)
        if self.logq:
            logits = logits - log_q[cand][None, :]
        # another row's copy of this row's target is not a negative
        same = target[:, None] == cand[None, :]
        same[:, :len(target)] &= ~torch.eye(len(target), dtype=torch.bool, device=target.device)
        logits = logits.masked_fill(same, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(target), device=target.device))

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Model rows of raw user ids (0 for users never seen in training). Returns int64 [n]."""
        return self.user_index_.rows(np.asarray(user_ids, dtype=np.int64), missing=-1, offset=0) + 1

    @torch.no_grad()
    def item_embeddings(self) -> np.ndarray:
        """float32 [n_items, dim], L2-normalised; zero rows for items with no training positive."""
        dev = next(self.model_.parameters()).device
        emb = self.model_.items(torch.arange(self.n_items, device=dev)).float().cpu().numpy().astype(np.float32)
        emb[self.item_counts_ == 0] = 0.0
        return emb

    @torch.no_grad()
    def item_biases(self) -> np.ndarray:
        """float32 [n_items]: the learned popularity bias added to the retrieval score (zeros without one)."""
        if self.model_.bias is None:
            return np.zeros(self.n_items, dtype=np.float32)
        return self.model_.bias.detach().float().cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def user_embeddings(self, user_ids: np.ndarray, hist: np.ndarray) -> np.ndarray:
        """user_ids int [n] raw ids; hist int [n, H] item rows (-1 = padding). Returns float32 [n, dim]."""
        dev = next(self.model_.parameters()).device
        hist = np.where(np.asarray(hist) < 0, self.n_items, hist).astype(np.int64)
        out = self.model_.users(torch.from_numpy(self.user_rows(user_ids)).to(dev), torch.from_numpy(hist).to(dev))
        return out.float().cpu().numpy().astype(np.float32)

    def scorer(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """A function (user_ids int [m], hist int [m, H]) -> retrieval scores float32 [m, n_items]:
        cosine / score_temperature (default: the training temperature) + item bias; items never
        positive in training score -inf (nothing is known of them). Call it on blocks of users: the
        score matrix is [m, n_items]."""
        emb, bias = self.item_embeddings(), self.item_biases()
        bias = np.where(self.item_counts_ > 0, bias, -np.inf).astype(np.float32)
        inv_t = np.float32(1.0 / (self.score_temperature or self.temperature))

        def score(user_ids: np.ndarray, hist: np.ndarray) -> np.ndarray:
            return (self.user_embeddings(user_ids, hist) @ emb.T) * inv_t + bias[None, :]

        return score


def recall_at_k(scores: np.ndarray, targets: np.ndarray, seen: list[np.ndarray], ks: tuple[int, ...],
                batch: int = 4096) -> dict[int, float]:
    """Share of rows whose target is in the top-k of ``scores`` over the whole catalogue.

    scores: float [n, n_items]; targets: int [n] item rows; seen: per row, int item rows excluded
    from the ranking (the user's training positives; the target itself is never excluded).
    Returns {k: recall}.
    """
    lengths = np.array([len(e) for e in seen], dtype=np.int64)
    indptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    flat = np.concatenate(seen).astype(np.int64) if len(seen) else np.zeros(0, dtype=np.int64)
    hits = recall_hits(lambda rows: np.asarray(scores[rows], dtype=np.float32), targets, flat, indptr, ks, batch)
    return {k: hits[k] / max(len(targets), 1) for k in ks}


def recall_hits(score_rows: Callable[[slice], np.ndarray], targets: np.ndarray, seen: np.ndarray,
                seen_indptr: np.ndarray, ks: tuple[int, ...], block: int = 1024) -> dict[int, int]:
    """Hits@k of ``targets`` (int [n] item rows) ranked by ``score_rows(slice) -> float32 [b, n_items]``,
    one block of ``block`` rows at a time: memory O(block x n_items), never O(n x n_items).

    seen, seen_indptr: CSR of the item rows each row excludes (the target itself never is).
    Returns {k: number of rows whose target is in the top k}.
    """
    kmax = max(ks)
    hits = {k: 0 for k in ks}
    for start in range(0, len(targets), block):
        rows = slice(start, min(len(targets), start + block))
        s = np.array(score_rows(rows), dtype=np.float32)  # a writable copy: exclusions are written in
        t = np.asarray(targets[rows], dtype=np.int64)
        a, b = seen_indptr[rows.start], seen_indptr[rows.stop]
        r = np.repeat(np.arange(len(t)), np.diff(seen_indptr[rows.start:rows.stop + 1]))
        cols = np.asarray(seen[a:b], dtype=np.int64)
        keep = cols != t[r]
        s[r[keep], cols[keep]] = -np.inf
        top = torch.topk(torch.from_numpy(s), min(kmax, s.shape[1]), dim=1, sorted=True).indices.numpy()
        for k in ks:
            hits[k] += int((top[:, :k] == t[:, None]).any(axis=1).sum())
    return hits
