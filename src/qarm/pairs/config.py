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
    u2i_logq: bool = True          # subtract log(expected appearances in a batch) from each candidate's logit
    u2i_item_bias: bool = True     # learned per-item bias (the popularity prior) in the retrieval score
    u2i_recency: bool = True       # learned per-position bias on the history pooling weights (time decay)
    u2i_user_dropout: float = 0.1  # share of training events whose user id is replaced by "unknown user"
    u2i_negatives: int = 0         # extra sampled negatives per batch (mixed negatives), drawn ~ count ** alpha
    u2i_neg_alpha: float = 0.0     # 0: uniform over trained items, 1: by popularity
    u2i_history_gap: int = 0       # training histories end a random 0..gap positives before the target
    u2i_score_temperature: float = 0.15  # retrieval score = cosine / this + item bias (docs/pairs.md)
    u2i_weight_decay: float = 0.0
    u2i_sparse: bool = False       # row-wise Adam on the id tables: O(batch) per step, not O(users + items); large catalogues
    device: str = "auto"           # auto | cpu | cuda | cuda:N (qarm.distributed.resolve_device)
    eval_max_users: int = 50_000   # valid users scored for U2I recall, each O(items); above: a seeded sample (0: all)
    eval_max_scores: int = 5_000_000_000  # and at most this many users x items scores (0: no budget; qarm.blocks.query_cap)
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
