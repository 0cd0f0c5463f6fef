"""SASRec (Kang & McAuley, 2018): causal self-attention over item-ID histories, the ID baseline.

Trained as "SASRec with cross-entropy" (Klenitskiy & Vasilev, RecSys 2023): a full softmax over the
catalogue at every position instead of the original one-negative BCE, the variant that matches or
beats BERT4Rec on MovieLens, so the baseline is a strong one. Scores are the last position's hidden
state dotted with the (tied) item embeddings; ranking is over the full catalogue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qarm.retrieve.base import SequenceRetriever
from qarm.retrieve.layers import Block
from qarm.retrieve.sequences import pad_right, windows
from qarm.retrieve.train import fit_loop


class SASRecNet(nn.Module):
    def __init__(self, n_items: int, max_len: int, dim: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)  # row 0 = padding, item row r -> r + 1
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        nn.init.normal_(self.item.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items int64 [N, S] (0 = padding, right-padded) -> hidden [N, S, D]."""
        pos = torch.arange(items.shape[1], device=items.device)
        x = self.drop(self.item(items) + self.pos(pos)[None])
        for blk in self.blocks:
            x, _ = blk(x)
        return self.ln(x)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> scores over item rows [..., n_items]."""
        return h @ self.item.weight[1:].T


class SASRecRetriever(SequenceRetriever):
    """SASRec over item rows (scikit-learn style); parameters as ``GenerativeRetriever`` (same budget).

    Learned: ``net_`` (SASRecNet), ``n_items_``, ``fit_log_``.
    """

    def fit(self, n_items: int, train_seqs: list[np.ndarray], valid_hist: list[np.ndarray] | None = None,
            valid_target: np.ndarray | None = None, checkpoint: str | Path | None = None) -> SASRecRetriever:
        """n_items: catalogue size (rows 0..n_items-1, held-out items included: they stay untrained rows)."""
        dev = self._setup()
        self.n_items_ = int(n_items)
        self._check_seqs(train_seqs, self.n_items_, "train_seqs")
        torch.manual_seed(self.seed)
        self.net_ = SASRecNet(self.n_items_, self.max_len, self.dim, self.layers, self.heads, self.dropout).to(dev)
        rows, _ = pad_right(windows(train_seqs, self.max_len + 1, self.windows_per_user), self.max_len + 1)
        seq = torch.from_numpy(rows + 1).to(dev)  # -1 padding -> 0
        inp, tgt = seq[:, :-1], seq[:, 1:] - 1      # targets as item rows, -1 = padding

        def batch_loss(b: torch.Tensor) -> torch.Tensor:
            b = b.to(dev)
            h = self.net_(inp[b])
            logits = self.net_.scores(h)
            return F.cross_entropy(logits.reshape(-1, self.n_items_), tgt[b].reshape(-1), ignore_index=-1)

        self.fit_log_ = fit_loop(self.net_, len(inp), batch_loss, self._valid_fn(valid_hist, valid_target),
                                 epochs=self.epochs, patience=self.patience, batch_size=self.batch_size, lr=self.lr,
                                 weight_decay=self.weight_decay, seed=self.seed,
                                 ckpt_path=None if checkpoint is None else Path(checkpoint),
                                 fingerprint=self._fingerprint(np.asarray([self.n_items_]), list(train_seqs)),
                                 desc="sasrec", verbose=self.verbose)
        self.n_train_windows_ = len(inp)
        return self

    @torch.no_grad()
    def recommend(self, histories: list[np.ndarray], k: int | None = None) -> np.ndarray:
        """Top-k item rows int64 [U, k] over the full catalogue (history items excluded when asked)."""
        k = self.beam_size if k is None else k
        dev = self.device_
        self.net_.eval()
        out = np.empty((len(histories), k), np.int64)
        for s in range(0, len(histories), self.eval_batch_users):
            chunk = histories[s:s + self.eval_batch_users]
            rows, lens = pad_right([np.asarray(h, np.int64) for h in chunk], self.max_len)
            h = self.net_(torch.from_numpy(rows + 1).to(dev))
            last = h[torch.arange(len(chunk), device=dev), torch.from_numpy(lens - 1).to(dev)]
            sc = self.net_.scores(last).masked_fill(self._banned(chunk, self.n_items_).to(dev), float("-inf"))
            out[s:s + len(chunk)] = sc.topk(k, dim=1).indices.cpu().numpy()
        return out
