"""Pre-LayerNorm causal transformer blocks, with a cached-context decode path for beam search.

Training runs the usual causal self-attention over right-padded sequences (a real token only sees
earlier real tokens, so padding needs no mask). Decoding encodes each user's history once, keeps every
layer's keys/values, and then runs only the few generated tokens of all beams against that cache, so a
beam costs O(T) new tokens instead of re-reading the whole history.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dh = heads, dim // heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [..., S, D] -> q, k, v each [..., H, S, dh]."""
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        shape = x.shape[:-1] + (self.heads, self.dh)
        return tuple(t.reshape(shape).transpose(-2, -3) for t in (q, k, v))  # type: ignore[return-value]

    def _out(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        a = a.transpose(-2, -3).reshape(x.shape)
        x = x + self.drop(self.proj(a))
        return x + self.drop(self.ff(self.ln2(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Causal self-attention over x [N, S, D]; returns the new x and this layer's (k, v) [N, H, S, dh]."""
        q, k, v = self._qkv(x)
        # no dropout on the attention weights: on CPU it forces SDPA's slow path (2x the step time);
        # the residual and feed-forward dropouts regularise
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self._out(x, a), (k, v)

    def decode(self, x: torch.Tensor, ctx: tuple[torch.Tensor, torch.Tensor], ctx_valid: torch.Tensor) -> torch.Tensor:
        """Generated tokens x [U, B, G, D] attend to the cached context (k, v) [U, H, C, dh] where
        ``ctx_valid`` bool [U, C], and causally to each other. Returns x [U, B, G, D]."""
        q, k, v = self._qkv(x)  # [U, B, H, G, dh]
        kc, vc = ctx
        U, B, H, G, dh = q.shape
        C = kc.shape[2]
        scale = 1.0 / math.sqrt(self.dh)
        # all beams' queries of a user against that user's cache in one batched matmul per (user, head)
        qc = q.permute(0, 2, 1, 3, 4).reshape(U, H, B * G, dh)
        s_ctx = (qc @ kc.transpose(-1, -2)).mul_(scale)  # [U, H, B*G, C]
        s_ctx = s_ctx.masked_fill(~ctx_valid[:, None, None, :], float("-inf"))
        s_ctx = s_ctx.reshape(U, H, B, G, C).permute(0, 2, 1, 3, 4)  # [U, B, H, G, C]
        s_gen = (q @ k.transpose(-1, -2)).mul_(scale)  # [U, B, H, G, G]
        causal = torch.ones(G, G, dtype=torch.bool, device=x.device).tril()
        s_gen = s_gen.masked_fill(~causal, float("-inf"))
        p = torch.softmax(torch.cat([s_ctx, s_gen], -1), -1)  # a token always sees itself: no empty row
        p_ctx = p[..., :C].permute(0, 2, 1, 3, 4).reshape(U, H, B * G, C)
        a = (p_ctx @ vc).reshape(U, H, B, G, dh).permute(0, 2, 1, 3, 4) + p[..., C:] @ v
        return self._out(x, a)
