"""Config of ``qarm serve``.

The server reads this section from the run directory's ``config.json`` (the config the run was
made with); ``--host``, ``--port``, ``--codes``, ``--media-root`` and ``--admin-port`` on the command
line win over it.
Every request limit lives here so that bad or hostile input is refused with a 4xx before it costs
memory or CPU.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    media_root: str = ""            # image_path / audio_path must lie inside this folder ("" = paths refused)
    max_batch_items: int = 256      # items per POST /items/codes
    max_candidates: int = 1000      # candidates per POST /rank
    max_history: int = 1000         # history items per POST /rank (the ranker keeps its last rank.history)
    max_body_bytes: int = 16_000_000
    max_text_chars: int = 20_000    # per text field
    max_media_bytes: int = 4_000_000  # decoded image/audio bytes per item (base64 or file)
    max_image_pixels: int = 16_000_000  # width * height, checked before the pixels are decoded
    codes_store: str = ""           # "" = codes.parquet in the run dir; or sqlite:///..., redis://...
    preload: bool = True            # load encoder, codebooks and ranker at startup, not on first request
    rank_variant: str = ""          # ranker variant POST /rank uses by default ("" = the ranker's default)
    torch_threads: int = 1          # intra-op threads per model call; 1 leaves a core to the event loop, and
                                    # OpenMP threads spin-waiting on a busy machine cost 3x the CPU
    limit_concurrency: int = 256    # open connections + tasks before uvicorn answers 503 (overload guard)
    device: str = "auto"            # the encoder's device for POST /items(/codes): auto | cpu | cuda | cuda:N
    admin_port: int = 0             # loopback-only admin listener (POST /admin/reload hot-swaps the run); 0 = off
