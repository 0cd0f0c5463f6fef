"""Config of the ``report`` stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ReportConfig:
    title: str = "qarm run report"
    projection_max_items: int = 3000         # items drawn (by seed) for the 2-D embedding projection
    projection: Literal["pca", "tsne"] = "pca"  # t-SNE separates clusters better but costs ~1 min per 1.5k items here
    dpi: int = 100                           # resolution of the embedded PNG plots
