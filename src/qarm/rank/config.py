"""Config of the ``train`` stage: the downstream ranker and its ablation variants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class RankConfig:
    """The ranker and the ablation.

    ``variants`` (all trained on identical data and splits, one model skeleton; only the item
    representation differs, see docs/metrics.md): ``id`` (ids and id history), ``frozen_mm`` /
    ``ia_rep`` (+ projected frozen raw / aligned embedding as item-table entry), ``vq``, ``rq``,
    ``qarm`` (= vq + rq; code embeddings trained end to end), ``qarm_dense`` (qarm + the aligned
    embedding), ``qarm_raw`` (qarm + the frozen raw embedding: the paper's production ranker, which
    already had the cached vector, plus the codes; not in the default list).
    """

    variants: list[str] = field(default_factory=lambda: ["id", "frozen_mm", "ia_rep", "vq", "rq", "qarm",
                                                         "qarm_dense"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tasks: list[str] = field(default_factory=lambda: ["click", "like"])
    history_label: str = "click"    # a history item is an earlier event with this label == 1
    history: int = 50               # last N positives before the event (DIN sequence)
    sim_history: int = 20           # SIM hard search: last positives sharing the target's RQ prefix
    sim_depth: int = 1              # ... of this depth (1 = the level-1 code; code variants only)
    sim_clusters: int = 0           # dense variants' SIM groups: k-means clusters (0 = quantize.rq_sizes[0])
    dim: int = 16                   # embedding size of ids, users and the VQ bag
    code_dim: int = 8               # embedding size of each RQ level / prefix code
    count_dim: int = 4              # embedding size of each bucketised code-match count
    att_hidden: list[int] = field(default_factory=lambda: [64, 16])   # DIN activation unit
    dnn_hidden: list[int] = field(default_factory=lambda: [256, 128])  # bottom MLP / each expert
    towers: Literal["shared", "mmoe"] = "shared"
    n_experts: int = 4              # mmoe only
    epochs: int = 5
    patience: int = 1               # epochs without a better valid AUC before stopping
    batch_size: int = 1024
    eval_batch_size: int = 8192
    lr: float = 0.002
    weight_decay: float = 0.0       # dense parameters only when sparse_ids is on
    sparse_ids: bool = False        # row-wise Adam on the user / item / code tables: O(batch) per step
                                    # instead of O(users + items) (large catalogues; docs/scaling.md)
    threads: int = 2                # torch intra-op threads
    device: str = "auto"            # auto | cpu | cuda | cuda:N (qarm.distributed.resolve_device)
    # training-only dropout, drawn from (seed, epoch): ids / codes replaced by their OOV row, so the
    # OOV rows learn and the model learns to rank when an id is missing (every cold item)
    item_id_dropout: float = 0.3    # per unique item row of a batch (docs/ranking-ablation.md: +0.8 pt cold AUC)
    user_id_dropout: float = 0.0    # per event
    drop_private_codes: bool = False  # a row that loses its id loses the codes no other trained item has
                                    # too: it then looks like a held-out item (docs/ranking-ablation.md)
    # fraction of the trained items made cold for the ranker (a fixed draw from the pipeline and
    # ranker seeds): their id reads the OOV row (training, evaluation and serving) and their events
    # never update the code embeddings they read (a stop-gradient), so, like a held-out item, their
    # codes are shaped by other items only and the ranker learns how far to trust such codes; 0 = off
    simulated_cold: float = 0.0
    # L2 penalty on the embedding rows a step reads (each unique item row's id and code embeddings,
    # each event's user row), per event and added to the loss: O(batch), sparse tables included,
    # unlike weight_decay (DeepCTR's l2_reg_embedding); 0 = off
    embedding_l2: float = 0.0
    code_dropout: float = 0.3       # per code of a unique item row (VQ bag entries, RQ levels, prefixes);
                                    # 0.3 lifts cold AUC of every code variant, paired by seed on two
                                    # machines (docs/ranking-ablation.md); studies before it used 0
    # where the VQ bag's codes are embedded: "own" (a table of its own, a row per pool item used as
    # a code) or "item_id" (code c = pool item c's row of the item-id table, so a cold item's bag
    # is the mean of its nearest warm items' trained id embeddings; docs/ranking-ablation.md)
    vq_table: str = "own"
    # code content: each code is embedded as its trainable row plus a trained projection (one per
    # code feature) of the mean embedding of the trained items that carry it (the embedding the
    # codes were quantised from), so part of what codes learn is a map from content to score that
    # a cold item's codes read too (docs/ranking-ablation.md); VQ bag (own table) and RQ features
    code_content: bool = False
    # with code_content: false = a code has no trainable row, only its projected content vector (an
    # ablation: what the rows can memorise about their items is gone; docs/ranking-ablation.md)
    code_rows: bool = True
    # which embedding a code's content vector averages: "quantized" (the one the codes were
    # quantised from), "raw" (the frozen raw vector: what cold items keep best) or "aligned"
    code_content_source: str = "quantized"
