"""Generative retrieval: a decoder-only transformer reads a history as code tokens and writes the next
item's code tuple, decoded by beam search constrained to the catalogue's tuples.

A history item is its T tokens (RQ levels + dedup level, each level its own token range); each token
gets a token, an item-position and a level embedding. Teacher forcing on a window of w items trains
all w - 1 next-item predictions of the window in one causal pass (the first item has no history, so
its tokens are inputs only). Decoding encodes the history once and extends every beam level by level.
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
from qarm.retrieve.tokens import TokenSpace, add_dedup
from qarm.retrieve.train import fit_loop
from qarm.retrieve.trie import CodeTrie, constrained_beam_search


class CodeDecoder(nn.Module):
    """Decoder-only transformer over code tokens. ``vocab`` includes padding id 0."""

    def __init__(self, vocab: int, n_levels: int, max_items: int, dim: int, layers: int, heads: int,
                 dropout: float) -> None:
        super().__init__()
        self.n_levels = n_levels
        self.tok = nn.Embedding(vocab, dim, padding_idx=0)
        self.pos = nn.Embedding(max_items, dim)
        self.lvl = nn.Embedding(n_levels, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        nn.init.normal_(self.lvl.weight, std=0.02)

    def embed(self, tokens: torch.Tensor, item_pos: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return self.drop(self.tok(tokens) + self.pos(item_pos) + self.lvl(level))

    def forward(self, tokens: torch.Tensor, item_pos: torch.Tensor,
                level: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """tokens/item_pos/level int64 [N, S] -> hidden float [N, S, D] and each layer's (k, v)."""
        x = self.embed(tokens, item_pos, level)
        cache = []
        for blk in self.blocks:
            x, kv = blk(x)
            cache.append(kv)
        return self.ln(x), cache

    def decode(self, tokens: torch.Tensor, item_pos: torch.Tensor, level: torch.Tensor,
               cache: list[tuple[torch.Tensor, torch.Tensor]], ctx_valid: torch.Tensor) -> torch.Tensor:
        """Generated tokens int64 [U, B, G] (item_pos, level broadcastable) -> hidden [U, B, G, D]."""
        x = self.embed(tokens, item_pos, level)
        for blk, kv in zip(self.blocks, cache):
            x = blk.decode(x, kv, ctx_valid)
        return self.ln(x)


class GenerativeRetriever(SequenceRetriever):
    """TIGER-style generative retrieval over semantic IDs, decoder-only (scikit-learn style).

    Parameters: those of ``SequenceRetriever`` (shared with SASRec, so both get the same budget).

    Learned: ``codes_`` int64 [n_items, T] (input codes + dedup level), ``space_`` (TokenSpace),
    ``trie_`` (CodeTrie), ``net_`` (CodeDecoder), ``fit_log_`` (FitLog).
    """

    # ------------------------------------------------------------------ fit
    def fit(self, codes: np.ndarray, train_seqs: list[np.ndarray], valid_hist: list[np.ndarray] | None = None,
            valid_target: np.ndarray | None = None, checkpoint: str | Path | None = None) -> GenerativeRetriever:
        """codes int [n_items, L] (one code tuple per item row, every catalogue item, held-out ones too);
        train_seqs: item-row arrays in time order. ``checkpoint``: per-epoch resumable checkpoint file."""
        dev = self._setup()
        self.codes_ = add_dedup(codes)
        n_items, T = self.codes_.shape
        self._check_seqs(train_seqs, n_items, "train_seqs")
        self.space_ = TokenSpace(self.codes_)
        self.trie_ = CodeTrie(self.codes_)
        self._trie_dev = self.trie_.to(dev)
        self._tok_dev = torch.from_numpy(self.space_.tokens(self.codes_)).to(dev)  # [n_items, T]
        torch.manual_seed(self.seed)
        self.net_ = CodeDecoder(self.space_.vocab, T, self.max_len + 1, self.dim, self.layers, self.heads,
                                self.dropout).to(dev)
        # level l's logits are confined to level l's token range
        allowed = torch.zeros(T, self.space_.vocab, dtype=torch.bool)
        for level in range(T):
            allowed[level, self.space_.level_slice(level)] = True
        self._allowed = allowed.to(dev)

        wins = windows(train_seqs, self.max_len + 1, self.windows_per_user)
        rows, lens = pad_right(wins, self.max_len + 1)
        tok = np.where(rows[:, :, None] >= 0, self.space_.tokens(self.codes_[np.maximum(rows, 0)]), 0)
        tok = torch.from_numpy(tok.reshape(len(rows), -1)).to(dev)  # [N, (max_len + 1) * T]
        S = tok.shape[1] - 1
        idx = torch.arange(S, device=dev)
        pos_in, lvl_in = idx // T, idx % T
        tgt = tok[:, 1:].clone()
        tgt[:, :T - 1] = 0  # the first item's tokens: no history to predict them from
        tgt_level = (idx + 1) % T
        used = int((tgt != 0).any(0).nonzero().max()) + 1 if (tgt != 0).any() else 1
        inp, tgt, pos_in, lvl_in, tgt_level = tok[:, :used], tgt[:, :used], pos_in[:used], lvl_in[:used], tgt_level[:used]
        mask = self._allowed[tgt_level]  # [S, V]

        def batch_loss(b: torch.Tensor) -> torch.Tensor:
            b = b.to(dev)
            x, y = inp[b], tgt[b]
            h, _ = self.net_(x, pos_in.expand_as(x), lvl_in.expand_as(x))
            logits = self.net_.head(h).masked_fill(~mask, float("-inf"))
            y = torch.where(y > 0, y, torch.full_like(y, -100))
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)

        self.fit_log_ = fit_loop(self.net_, len(inp), batch_loss, self._valid_fn(valid_hist, valid_target),
                                 epochs=self.epochs, patience=self.patience, batch_size=self.batch_size, lr=self.lr,
                                 weight_decay=self.weight_decay, seed=self.seed,
                                 ckpt_path=None if checkpoint is None else Path(checkpoint),
                                 fingerprint=self._fingerprint(self.codes_, list(train_seqs)),
                                 desc="generative", verbose=self.verbose)
        self.n_train_windows_ = len(inp)
        return self

    # ------------------------------------------------------------ inference
    @torch.no_grad()
    def recommend(self, histories: list[np.ndarray], k: int | None = None) -> np.ndarray:
        """Top-k item rows int64 [U, k] per history (best first; -1 where fewer were reachable).
        ``k`` defaults to and may not exceed ``beam_size``."""
        k = self.beam_size if k is None else k
        if k > self.beam_size:
            raise ValueError(f"k={k} exceeds beam_size={self.beam_size}")
        self.net_.eval()
        out = np.full((len(histories), k), -1, np.int64)
        for s in range(0, len(histories), self.eval_batch_users):
            chunk = histories[s:s + self.eval_batch_users]
            items, _ = self._beam(chunk)
            out[s:s + len(chunk)] = items[:, :k].cpu().numpy()
        return out

    def _beam(self, histories: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device_
        T = self.codes_.shape[1]
        if any(len(h) == 0 for h in histories):
            raise ValueError("every history needs at least one item")
        rows, lens = pad_right([np.asarray(h, np.int64) for h in histories], self.max_len)
        rows_t = torch.from_numpy(rows).to(dev)
        lens_t = torch.from_numpy(lens).to(dev)
        U = len(histories)
        tok = torch.where(rows_t[:, :, None] >= 0, self._tok_dev[rows_t.clamp(min=0)], 0).reshape(U, -1)
        C = tok.shape[1]
        idx = torch.arange(C, device=dev)
        h, cache = self.net_(tok, (idx // T).expand(U, -1), (idx % T).expand(U, -1))
        ctx_valid = idx[None, :] < (lens_t * T)[:, None]
        last = h[torch.arange(U, device=dev), lens_t * T - 1]  # predicts the next item's first level
        first = torch.log_softmax(self.net_.head(last)[:, self.space_.level_slice(0)], -1)
        offsets = torch.from_numpy(self.space_.offsets[:-1] + 1).to(dev)

        def step(prefix: torch.Tensor, depth: int) -> torch.Tensor:
            B = prefix.shape[1]
            if depth == 0:
                return first[:, None, :].expand(U, B, -1)
            gen = prefix + offsets[:depth]  # level-local codes -> token ids
            hid = self.net_.decode(gen, lens_t[:, None, None], torch.arange(depth, device=dev), cache, ctx_valid)
            return torch.log_softmax(self.net_.head(hid[:, :, -1])[..., self.space_.level_slice(depth)], -1)

        banned = self._banned(histories, len(self.codes_)).to(dev)
        return constrained_beam_search(step, self._trie_dev, U, self.beam_size, banned)
