"""Config of the ``align`` stage: multi-modal encoder and contrastive item alignment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class AlignConfig:
    text_model: str = "all-minilm-l6-v2"      # built-in name, any HF name, or a local path
    image_model: str = "efficientnet-lite0"   # built-in name, or a timm/torchvision arch
    image_weights: str = ""                   # user-supplied weights for timm/torchvision archs
    use_audio: bool = True
    fusion: Literal["mlp", "transformer"] = "mlp"
    dim: int = 128
    mode: Literal["head", "partial", "full", "lora"] = "head"
    unfreeze_blocks: int = 1
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.001
    temperature: float = 0.07
    learnable_temperature: bool = True
    modality_dropout: float = 0.1
    source_weights: dict[str, float] = field(default_factory=lambda: {"u2i": 1.0, "i2i": 1.0})
