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
    vq_hnsw_m: int = 32             # HNSW graph degree
    vq_ef_search: int = 128         # HNSW search breadth
    vq_ivf_nlist: int = 0           # IVF lists; 0 = about 4 * sqrt(pool size)
    vq_nprobe: int = 16             # IVF lists probed per query
    # RQ-Kmeans: residual k-means, one level after another
    rq_sizes: list[int] = field(default_factory=lambda: [64, 64, 64])
    rq_balanced: bool = True
    rq_n_init: int = 1              # k-means restarts per level (best objective kept)
    rq_iters: int = 25
    rq_init: Literal["kmeans++", "random"] = "kmeans++"
    rq_max_train_points: int = 500_000  # k-means sample per level; 0 = every item
    rq_refine_rounds: int = 2       # joint codebook refinement rounds after the greedy levels
    rq_balance_budget: float = 0.2  # balanced: max extra squared error per item, as a share of the mean error
    rq_balance_candidates: int = 32  # balanced: last-level codes considered per item when spreading
    rq_balance_rounds: int = 30     # balanced: price-update rounds
    rq_chunk_size: int = 16384      # rows per transform chunk
    # RQ method: "kmeans" (every level residual k-means) or "fsq" (Res-Kmeans-FSQ, QARM V2: the last level
    # is finite scalar quantisation of the residual; rq_sizes[-1] must equal prod(rq_fsq_levels))
    rq_method: Literal["kmeans", "fsq"] = "kmeans"
    rq_fsq_levels: list[int] = field(default_factory=list)  # values per FSQ dimension; [] = auto (32 -> 4,4,2)
    rq_fsq_balanced: bool = False   # fsq: capacity prices on the FSQ cells too (rq_balance_*; off = V2's FSQ)
    rq_fsq_epochs: int = 300        # fsq: straight-through training epochs over the fitted items
    rq_fsq_lr: float = 0.01         # fsq: Adam learning rate
