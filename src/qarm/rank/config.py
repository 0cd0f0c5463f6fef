"""Config of the ``train`` stage: the downstream ranker and its ablation variants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class RankConfig:
    variants: list[str] = field(default_factory=lambda: ["id", "frozen_mm", "ia_rep", "vq", "rq", "qarm"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tasks: list[str] = field(default_factory=lambda: ["click", "like"])
    history: int = 50
    dim: int = 16
    towers: Literal["shared", "mmoe"] = "shared"
    epochs: int = 5
    patience: int = 1
    batch_size: int = 1024
    lr: float = 0.002
    weight_decay: float = 0.0
