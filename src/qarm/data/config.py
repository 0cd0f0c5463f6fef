"""Config of the ``prepare`` stage: where items and events come from, and how they are split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SyntheticConfig:
    """Size and shape of the synthetic multi-modal world (``qarm.data.synthetic``)."""

    n_users: int = 2000
    n_items: int = 1500
    n_events: int = 60000
    n_topics: int = 16            # latent content topics: drive text, image, audio
    n_business: int = 12          # latent business clusters: drive behaviour
    topic_business_agreement: float = 0.35  # share of items whose business cluster follows their topic
    popularity_exponent: float = 1.0        # Zipf exponent of item popularity
    image_size: int = 64
    audio_seconds: float = 1.0
    audio_sample_rate: int = 8000
    with_audio: bool = True
    business_mark_share: float = 0.8  # items whose content carries their business cluster's mark
    # media: a PNG (and WAV) per item; embeddings: one float32 .npy of item vectors (topic + a quiet
    # business direction), read by align.item_embeddings, for worlds of a million items
    content: Literal["media", "embeddings"] = "media"
    embedding_dim: int = 256
    embedding_mark_weight: float = 0.25  # embeddings: length of the business direction (topic: 1)
    embedding_noise: float = 1.0        # embeddings: length of the per-item noise


@dataclass
class DataConfig:
    """Input data. ``source``: ``synthetic``, ``movielens`` (any official layout) or ``files``."""

    source: Literal["synthetic", "movielens", "files"] = "synthetic"
    path: str = ""                 # movielens folder, or the folder relative file names are read from (files)
    items_file: str = ""           # source=files: items Parquet/CSV
    events_file: str = ""          # source=files: events Parquet/CSV
    label_columns: list[str] = field(default_factory=lambda: ["click", "like"])
    click_min_rating: float = 4.0  # movielens: click = rating >= this
    like_min_rating: float = 5.0   # movielens: like = rating >= this
    strict: bool = False           # true: a bad event row is an error instead of a counted skip
    item_text_file: str = ""       # optional CSV/Parquet of extra item text joined on item id (relative: in path)
    item_text_id_column: str = "item_id"                  # its item id column (plots.csv: movie_id)
    item_text_columns: list[str] = field(default_factory=lambda: ["description"])  # its text columns
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class SplitConfig:
    """Global temporal split plus the strict item cold-start hold-out."""

    train_frac: float = 0.8
    valid_frac: float = 0.1        # test gets the rest
    holdout_item_frac: float = 0.1  # share of items held out entirely (strict item cold start)
    freq_bucket_edges: list[int] = field(default_factory=lambda: [0, 5, 20, 100])  # by train count
