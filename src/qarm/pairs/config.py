"""Config of the ``pairs`` stage: U2I two-tower + trigger mining, and Swing I2I."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PairsConfig:
    sources: list[str] = field(default_factory=lambda: ["u2i", "i2i"])
    label: str = "click"           # which label column makes an event a positive
    # U2I two-tower retrieval model
    u2i_dim: int = 64
    u2i_history: int = 50
    u2i_epochs: int = 10
    u2i_batch_size: int = 512
    u2i_lr: float = 0.003
    u2i_temperature: float = 0.05
    u2i_logq: bool = True
    # trigger mining
    trigger_window: int = 50
    # Swing
    swing_alpha: float = 1.0
    swing_max_user_history: int = 100
    swing_max_item_users: int = 200
    swing_topn: int = 20
    swing_min_score: float = 0.0
    swing_mutual: bool = False
