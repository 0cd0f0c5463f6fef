"""The aligned item encoder: per-modality features -> one token each -> fusion -> L2-normalised [dim].

A missing modality's token is a learned placeholder (never a dropped item); during training each
present modality is hidden with probability ``modality_dropout`` (never all of an item's), so the
encoder learns to embed items from whatever content they have: cold-start items included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qarm.align.audio import AudioCNN


class Fusion(nn.Module):
    """features {modality: [b, d_m]} + present bool [b, M] -> float [b, dim], L2-normalised.

    ``kind="mlp"``: concatenated tokens -> 2-layer MLP. ``kind="transformer"``: a [CLS] token and
    one token per modality (plus a learned modality embedding) through 2 transformer layers.
    """

    def __init__(self, in_dims: dict[str, int], hidden: int, dim: int, kind: str = "mlp",
                 modality_dropout: float = 0.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.modalities = list(in_dims)
        self.kind, self.modality_dropout, self.dim = kind, modality_dropout, dim
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden)) for m, d in in_dims.items()})
        self.placeholder = nn.Parameter(torch.randn(len(in_dims), hidden) * 0.02)
        if kind == "mlp":
            self.mlp = nn.Sequential(nn.Linear(hidden * len(in_dims), hidden), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, dim))
        else:
            self.type_emb = nn.Parameter(torch.randn(len(in_dims), hidden) * 0.02)
            self.cls = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
            layer = nn.TransformerEncoderLayer(hidden, nhead=4, dim_feedforward=2 * hidden, dropout=dropout,
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))

    def forward(self, feats: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        if self.training and self.modality_dropout > 0:
            # drawn on the CPU generator (seeded per epoch by the trainer), then moved: same draws on any device
            keep = (torch.rand(present.shape) >= self.modality_dropout).to(present.device)
            dropped = present & keep
            present = torch.where(dropped.any(dim=1, keepdim=True), dropped, present)  # never hide everything
        tokens = torch.stack([self.proj[m](feats[m].float()) for m in self.modalities], dim=1)   # [b, M, h]
        tokens = torch.where(present.unsqueeze(-1), tokens, self.placeholder.unsqueeze(0))
        if self.kind == "mlp":
            out = self.mlp(tokens.flatten(1))
        else:
            x = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens + self.type_emb], dim=1)
            out = self.out(self.encoder(x)[:, 0])
        return F.normalize(out, dim=-1)


class AlignModel(nn.Module):
    """Live towers (those that fine-tune) + the audio CNN + fusion.

    ``forward(batch)`` takes ``ItemStore.batch`` output: for each modality either its frozen
    feature [b, d], the live tower's input, or (audio) log-mel; returns float [b, dim].
    """

    def __init__(self, in_dims: dict[str, int], live_towers: dict[str, nn.Module], hidden: int, dim: int,
                 kind: str = "mlp", modality_dropout: float = 0.0, dropout: float = 0.1, audio_dim: int = 128) -> None:
        """in_dims: modality -> frozen feature size (audio: number of mel bands)."""
        super().__init__()
        self.modalities = list(in_dims)
        self.towers = nn.ModuleDict(live_towers)
        self.audio = AudioCNN(in_dims["audio"], audio_dim) if "audio" in in_dims else None
        dims = {m: (audio_dim if m == "audio" else d) for m, d in in_dims.items()}
        self.fusion = Fusion(dims, hidden, dim, kind, modality_dropout, dropout)

    def train(self, mode: bool = True) -> AlignModel:
        super().train(mode)
        for tower in self.towers.values():  # pretrained towers stay in eval mode (fixed BN, no dropout)
            tower.eval()
        return self

    def forward(self, batch: dict) -> torch.Tensor:
        feats = {}
        for m in self.modalities:
            x = batch[m]
            if m == "audio":
                feats[m] = self.audio(x)
            elif m in self.towers:
                feats[m] = self.towers[m](**x) if isinstance(x, dict) else self.towers[m](x)
            else:
                feats[m] = x
        return self.fusion(feats, batch["present"])
