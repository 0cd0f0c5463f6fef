"""What the server computes with: the code store, the aligned encoder with the frozen codebooks,
and the rankers, each loaded once and shared by every request.

Heavy parts load at startup (``ServeConfig.preload``) when the run has them; a run without the
align/quantize/train outputs still serves code lookups, and the endpoints that need the missing
part answer 503 naming the stage to run. Model calls go through one lock: two requests never run
torch at once (that would only oversubscribe the cores), and Hugging Face tokenizers are not safe
to share between threads.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qarm.config import from_dict
from qarm.errors import QarmError
from qarm.io import read_json, read_parquet
from qarm.serve.config import ServeConfig
from qarm.serve.kv import CodeStore, open_code_store
from qarm.serve.media import BadInput, check_audio, check_image, decode_b64, resolve_inside

log = logging.getLogger("qarm.serve")


class Unavailable(QarmError):
    """A part of the run the request needs is missing (stage not run): HTTP 503."""


def load_serve_config(run_dir: str | Path) -> ServeConfig:
    """The ``serve`` section of ``RUN/config.json`` (defaults when the run has none)."""
    raw = read_json(Path(run_dir) / "config.json", default={}) or {}
    return from_dict(ServeConfig, raw.get("serve", {}), "serve")


class ServeModels:
    """Code store, encoder + code assigner, rankers and the item catalogue of one run directory."""

    def __init__(self, run_dir: str | Path, cfg: ServeConfig) -> None:
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise QarmError(f"run directory {self.run_dir} does not exist")
        self.cfg = cfg
        self.lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.store: CodeStore = open_code_store(cfg.codes_store, self.run_dir)
        self.catalog_ = self._read_catalog()
        summary = read_json(self.run_dir / "rank" / "summary.json", default={}) or {}
        self.variants_: list[str] = list(summary.get("variants", []))  # what the train stage trained
        self.default_variant_: str | None = cfg.rank_variant or summary.get("default_variant") or None
        self._encoder: Any = None
        self._assigner: Any = None
        self._rankers: dict[str, Any] = {}

    def _read_catalog(self) -> np.ndarray | None:
        """Sorted int64 item ids of items.parquet, or None when the run has no items table."""
        path = self.run_dir / "items.parquet"
        if not path.exists():
            return None
        return np.sort(read_parquet(path, columns=["item_id"])["item_id"].to_numpy(dtype=np.int64))

    # ------------------------------------------------------------------ loading

    def preload(self) -> None:
        """Load every part the run has; a part whose stage has not run is left for a 503 later."""
        has_encoder = (self.run_dir / "align").is_dir() and (self.run_dir / "quant").is_dir()
        has_ranker = (self.run_dir / "rank").is_dir()
        if has_encoder or has_ranker:  # a lookup-only run never imports torch: it starts in a second
            self.set_threads()
        if has_encoder:
            self.encoder_and_assigner()
        if has_ranker:
            self.ranker(None)

    def set_threads(self) -> None:
        """Apply ``torch_threads`` in the calling thread (OpenMP settings are per thread)."""
        import torch

        if torch.get_num_threads() != self.cfg.torch_threads:
            torch.set_num_threads(max(1, self.cfg.torch_threads))

    def encoder_and_assigner(self) -> tuple[Any, Any]:
        with self._load_lock:
            if self._encoder is None:
                for sub, stage in (("align", "align"), ("quant", "quantize")):
                    if not (self.run_dir / sub).is_dir():
                        raise Unavailable(f"this run has no {sub}/ (the '{stage}' stage has not run): "
                                          f"POST /items/codes needs the aligned encoder and the frozen codebooks")
                from qarm.align.encoder import load_item_encoder
                from qarm.quant.assign import CodeAssigner

                self._assigner = CodeAssigner.load(self.run_dir)
                self._encoder = load_item_encoder(self.run_dir)
                log.info("loaded aligned encoder and codebooks from %s", self.run_dir)
        return self._encoder, self._assigner

    def ranker(self, variant: str | None) -> tuple[str, Any]:
        """(variant name, Ranker); ``None`` = ``serve.rank_variant``, else the train stage's default."""
        variant = variant or self.default_variant_
        key = variant or ""
        with self._load_lock:
            if key not in self._rankers:
                if not (self.run_dir / "rank").is_dir():
                    raise Unavailable("this run has no rank/ (the 'train' stage has not run): POST /rank needs it")
                if variant is not None and self.variants_ and variant not in self.variants_:
                    raise BadInput(f"ranker variant {variant!r} was not trained in this run; "
                                   f"trained: {', '.join(self.variants_)}", 404)
                from qarm.rank.predict import load_ranker

                self._rankers[key] = load_ranker(self.run_dir, variant)
                log.info("loaded ranker %s from %s", variant or "(default)", self.run_dir)
        ranker = self._rankers[key]
        return str(getattr(ranker, "variant", variant or "default")), ranker

    # ------------------------------------------------------------------ requests

    def unknown_ids(self, ids: list[int]) -> list[int]:
        """The ids not in the run's item catalogue, in request order, without repeats."""
        if self.catalog_ is None:
            raise Unavailable("this run has no items.parquet (the 'prepare' stage has not run)")
        arr = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.catalog_, arr).clip(0, max(len(self.catalog_) - 1, 0))
        missing = arr[self.catalog_[pos] != arr] if len(self.catalog_) else arr
        return list(dict.fromkeys(missing.tolist()))

    def encode_items(self, items: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """``items``: validated ``NewItem``s -> (vq int32 [n, K], rq int32 [n, L]), request order."""
        encoder, assigner = self.encoder_and_assigner()
        with tempfile.TemporaryDirectory(prefix="qarm-serve-") as tmp:
            frame = self._items_frame(items, Path(tmp))
            with self.lock:
                self.set_threads()
                # the codebooks were fitted on the aligned embedding unless quantize.embedding said raw
                raw = getattr(assigner, "embedding", "emb_aligned.npy") == "emb_raw.npy"
                emb = np.asarray(encoder.encode_raw(frame) if raw else encoder.encode(frame), dtype=np.float32)
                if emb.shape[0] != len(items):
                    raise RuntimeError(f"encoder returned {emb.shape[0]} rows for {len(items)} items")
                vq, rq = assigner.assign(emb, item_ids=self._pool_ids(items, assigner))
        return np.asarray(vq), np.asarray(rq)

    @staticmethod
    def _pool_ids(items: list[Any], assigner: Any) -> np.ndarray:
        """Item ids for VQ's self-exclusion: an item sent with the id of a pool item is that item (new
        content for it), so it skips itself as at quantize time; an item without an id gets an id
        outside the pool."""
        pool = np.asarray(getattr(getattr(assigner, "vq", None), "pool_ids_", np.zeros(0, np.int64)))
        outside = int(pool.min()) - 1 if len(pool) and int(pool.min()) > -(2**63) else -(2**63)
        return np.array([outside if it.item_id is None else it.item_id for it in items], dtype=np.int64)

    def _items_frame(self, items: list[Any], tmp: Path) -> pd.DataFrame:
        """Validated request items -> a DataFrame in the items schema, media written under ``tmp``."""
        from qarm.data.items import default_text

        rows = []
        for i, it in enumerate(items):
            where = f"items[{i}]"
            rows.append({
                "item_id": it.item_id,
                "title": it.title.strip(), "description": it.description.strip(),
                "tags": it.tags.strip(), "category": it.category.strip(), "text": it.text.strip(),
                "image": self._media(it.image_b64, it.image_path, "image", where, tmp / f"{i}-image"),
                "audio": self._media(it.audio_b64, it.audio_path, "audio", where, tmp / f"{i}-audio"),
            })
        df = pd.DataFrame(rows)
        composed = default_text(df)
        df["text"] = df["text"].where(df["text"] != "", composed)
        df["has_text"] = df["text"].str.strip() != ""
        df["has_image"] = df["image"].notna()
        df["has_audio"] = df["audio"].notna()
        # a served item is new by definition: never in training, held out of nothing
        df["holdout"] = False
        df["cold"] = True
        df["train_count"] = np.zeros(len(df), dtype=np.int64)
        df["freq_bucket"] = "0"
        return df

    def _media(self, b64: str | None, path: str | None, kind: str, where: str, stem: Path) -> str | None:
        """Check one image/audio and return a file path the encoder can read (None when absent)."""
        cfg = self.cfg
        if b64 is None and path is None:
            return None
        if b64 is not None:
            field = f"{where}.{kind}_b64"
            data = decode_b64(b64, field, cfg.max_media_bytes)
            real = None
        else:
            field = f"{where}.{kind}_path"
            real = resolve_inside(path, cfg.media_root, field, cfg.max_media_bytes)
            data = real.read_bytes()
        if kind == "image":
            suffix = check_image(data, field, cfg.max_image_pixels)
        else:
            suffix, cut = ".wav", check_audio(data, field, self._audio_seconds())
            if cut is not data:  # a long clip: hand the encoder the part it reads
                data, real = cut, None
        if real is not None:
            return str(real)
        out = stem.with_suffix(suffix)
        out.write_bytes(data)
        return str(out)

    def _audio_seconds(self) -> float | None:
        """Seconds of audio the encoder reads (its spec: [sample_rate, seconds, n_mels]); None = unknown."""
        try:
            return float(self._encoder.spec["audio"][1])
        except (AttributeError, KeyError, IndexError, TypeError, ValueError):
            return None

    def status(self) -> dict[str, Any]:
        """What is loaded: for /health."""
        return {"codes_store": self.store.url, "n_codes": len(self.store), "encoder": self._encoder is not None,
                "rankers": sorted(k or "default" for k in self._rankers), "variants": self.variants_}

    def close(self) -> None:
        self.store.close()
