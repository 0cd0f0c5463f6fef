"""Config of the ``quantize`` stage: VQ top-K codes and RQ-Kmeans."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class QuantizeConfig:
    embedding: Literal["aligned", "raw"] = "aligned"
    # VQ: ids of the top-K nearest items of a reference pool
    vq_k: int = 25
    vq_pool: Literal["all", "popular", "random"] = "all"
    vq_pool_size: int = 0           # 0 = every candidate
    vq_metric: Literal["cosine", "l2"] = "cosine"
    vq_index: Literal["flat", "hnsw", "ivf"] = "flat"
    vq_exclude_self: bool = True
    # RQ-Kmeans: residual k-means, one level after another
    rq_sizes: list[int] = field(default_factory=lambda: [64, 64, 64])
    rq_balanced: bool = True
    rq_n_init: int = 1
    rq_iters: int = 25
