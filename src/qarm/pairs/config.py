"""Config of the ``pairs`` stage: U2I two-tower + trigger mining, and Swing I2I."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class PairsConfig:
    sources: list[str] = field(default_factory=lambda: ["u2i", "i2i"])  # pair sources, kept in this order
    label: str = "click"           # which label column makes an event a positive
    # U2I two-tower retrieval model
    u2i_dim: int = 64
    u2i_history: int = 50          # recent positives the user tower pools over
    u2i_pooling: Literal["attention", "mean"] = "attention"
    u2i_epochs: int = 10
    u2i_batch_size: int = 512
    u2i_lr: float = 0.003
    u2i_temperature: float = 0.05
    u2i_logq: bool = True
    # trigger mining
    trigger_window: int = 50       # latest positives strictly before the target that may be its trigger
    trigger_min_score: float = -1.0  # keep trigger pairs with cosine above this (-1: all)
    # Swing
    swing_alpha: float = 1.0
    swing_max_user_history: int = 100
    swing_max_item_users: int = 200
    swing_topn: int = 20
    swing_min_score: float = 0.0   # "stable" pairs: score above this
    swing_mutual: bool = False     # ... and, if true, each item in the other's top-N
