"""Config of ``qarm serve``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    media_root: str = ""            # image_path / audio_path must lie inside this folder
    max_batch_items: int = 256
    max_candidates: int = 1000
    max_body_bytes: int = 16_000_000
    codes_store: str = ""           # "" = codes.parquet in the run dir; or sqlite:///..., redis://...
