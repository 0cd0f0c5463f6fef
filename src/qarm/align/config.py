"""Config of the ``align`` stage: multi-modal encoder and contrastive item alignment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class AlignConfig:
    # towers
    text_model: str = "all-minilm-l6-v2"      # built-in name, any HF name, or a local path ("" = no text tower)
    image_model: str = "efficientnet-lite0"   # built-in name, efficientnet-*, timm:<arch>, torchvision:<arch> ("" = none)
    image_weights: str = ""                   # user-supplied weights (state dict) for the image architecture
    joint_model: str = ""                     # CLIP-like HF model (name or path): replaces the text and image towers
    use_audio: bool = True                    # log-mel + small CNN trained from scratch (items with audio files)
    image_size: int = 224                     # square input side of the image tower
    text_max_length: int = 128                # tokens the text tower reads
    audio_sample_rate: int = 16000
    audio_seconds: float = 5.0                # clips are cropped / zero-padded to this length
    n_mels: int = 64
    encode_batch_size: int = 32               # frozen-tower feature extraction batch
    # fusion
    fusion: Literal["mlp", "transformer"] = "mlp"
    hidden: int = 256                         # fusion width (one token per modality)
    dim: int = 128                            # aligned embedding size
    modality_dropout: float = 0.1             # training: chance a present modality is hidden (never all)
    dropout: float = 0.1
    # training
    mode: Literal["head", "partial", "full", "lora"] = "head"
    unfreeze_blocks: int = 1                  # partial: top blocks of each pretrained tower that train
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: list[str] = field(default_factory=list)  # empty: peft's default for the architecture
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.001                         # fusion head, audio CNN, LoRA adapters
    tower_lr: float = 2e-5                    # unfrozen pretrained tower weights (partial, full)
    weight_decay: float = 0.01
    temperature: float = 0.07
    learnable_temperature: bool = True
    source_weights: dict[str, float] = field(default_factory=lambda: {"u2i": 1.0, "i2i": 1.0})
    max_pairs: int = 0                        # 0: all pairs; else a seeded sample (tiny CPU runs of live modes)
    content_weight: float = 0.0               # raw-similarity distillation beside InfoNCE (0 = off; docs/metrics.md)
    content_temperature: float = 0.05         # softmax temperature of both similarity distributions
    # bring your own item embeddings (a frozen "given" tower feature; no text/image tower runs, mode head)
    item_embeddings: str = ""                 # "" | path.npy (+ item_embedding_ids) | path.parquet/.csv | "items"
    item_embedding_ids: str = ""              # .npy int64 [n]: the item id of each row of item_embeddings.npy
    item_embedding_column: str = "embedding"  # fixed-size list column (Parquet file, or items.parquet for "items")
    device: str = "auto"                      # auto | cpu | cuda | cuda:N (qarm.distributed)
    # evaluation
    eval_ks: list[int] = field(default_factory=lambda: [10, 50])
    # each scored query costs O(items): above these, a seeded sample (0: all), so evaluation grows
    # with the catalogue, not with catalogue x events
    eval_max_pairs: int = 50_000              # valid pairs (and, separately, cold-target valid pairs) for recall
    eval_max_items: int = 10_000              # query items for business precision@k (synthetic worlds only)
    eval_max_scores: int = 5_000_000_000      # and at most this many queries x items scores per measure (0: no budget)
