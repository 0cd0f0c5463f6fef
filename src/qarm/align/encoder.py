"""The trained item encoder as an object: encode NEW items (any subset of modalities) after training.

``run/align/encoder.pt`` holds a spec (which pretrained towers, sizes, modalities, which towers
fine-tuned) and the trained weights (fusion, audio CNN, fine-tuned towers with LoRA merged).
``load_item_encoder(run_dir)`` rebuilds the pretrained towers from the spec, loads the weights and
returns an ``ItemEncoder``: ``encode(items)`` -> aligned, ``encode_raw(items)`` -> raw embedding.
Both are batch-invariant: an item's bits are those of its row in emb_aligned.npy / emb_raw.npy
whatever else is encoded with it (docs/determinism.md).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from qarm.align.config import AlignConfig
from qarm.align.given import GIVEN, given_spec, load_given
from qarm.align.inputs import ItemContent, ItemStore, build_store, read_content
from qarm.align.model import AlignModel
from qarm.align.towers import load_image_tower, load_joint_towers, load_text_tower
from qarm.align.train import embed_rows
from qarm.errors import QarmError, StageInputError
from qarm.io import save_torch


def tower_spec(cfg: AlignConfig) -> dict:
    """What rebuilds the pretrained towers and the input preparation, as plain data."""
    return {"text_model": cfg.text_model, "image_model": cfg.image_model, "image_weights": cfg.image_weights,
            "joint_model": cfg.joint_model, "image_size": cfg.image_size, "text_max_length": cfg.text_max_length,
            "use_audio": cfg.use_audio, "audio": [cfg.audio_sample_rate, cfg.audio_seconds, cfg.n_mels],
            "encode_batch_size": cfg.encode_batch_size,
            "given": given_spec(cfg.item_embeddings, cfg.item_embedding_ids, cfg.item_embedding_column)}


def load_towers(spec: dict) -> tuple[dict[str, torch.nn.Module], int]:
    """Pretrained (frozen, eval) towers by modality, and the image size they read."""
    towers: dict[str, torch.nn.Module] = {}
    size = int(spec["image_size"])
    if spec.get("given"):  # the user's own embeddings replace every pretrained tower
        return towers, size
    if spec["joint_model"]:
        towers["text"], towers["image"], size = load_joint_towers(spec["joint_model"], spec["text_max_length"])
    else:
        text = load_text_tower(spec["text_model"], spec["text_max_length"])
        image = load_image_tower(spec["image_model"], spec["image_weights"], size)
        towers.update({k: v for k, v in (("text", text), ("image", image)) if v is not None})
    for t in towers.values():
        t.requires_grad_(False)
    return towers, size


FEATURE_VERSION = "bucket16-1"  # batch-invariant extraction; caches of earlier code are not reused


def tower_keys(spec: dict, size: int) -> dict[str, str]:
    """Cache keys: a frozen feature depends on the model, its weights, the input preparation and
    the fixed batch shape it was computed in (the bits depend on it)."""
    shape = f";b={spec['encode_batch_size']};{FEATURE_VERSION}"
    if spec["joint_model"]:
        base = f"joint={spec['joint_model']}"
        return {"text": f"{base};len={spec['text_max_length']}{shape}", "image": f"{base};size={size}{shape}",
                "audio": f"audio={spec['audio']};{FEATURE_VERSION}"}
    return {"text": f"text={spec['text_model']};len={spec['text_max_length']}{shape}",
            "image": f"image={spec['image_model']};w={spec['image_weights']};size={size}{shape}",
            "audio": f"audio={spec['audio']};{FEATURE_VERSION}"}


class ItemEncoder:
    """Encodes items-schema frames. ``model``: trained AlignModel; ``raw_towers``: pretrained towers."""

    def __init__(self, spec: dict, model: AlignModel, raw_towers: dict[str, torch.nn.Module], image_size: int,
                 device: torch.device | str = "cpu") -> None:
        self.spec, self.model, self.raw_towers, self.image_size = spec, model, raw_towers, image_size
        self.device = torch.device(device)
        self.modalities = list(model.modalities)
        self.dim = int(model.fusion.dim)
        self.last_counts_: dict[str, int] = {}

    def store(self, items: pd.DataFrame, cache_dir: Path | None = None, progress: bool = False,
              file: str = "items") -> ItemStore:
        given = None
        if GIVEN in self.modalities:  # own embeddings: from the frame's list column, else the configured file
            given = load_given(self.spec["given"], items, file, dim=int(self.spec["in_dims"][GIVEN]))
            content = ItemContent([""] * len(items), [None] * len(items), [None] * len(items))
        else:
            content = read_content(items, file=file)
        store = build_store(content, self.raw_towers, self.modalities, set(self.model.towers.keys()),
                            self.image_size, tuple(self.spec["audio"]), int(self.spec["encode_batch_size"]),
                            cache_dir, tower_keys(self.spec, self.image_size), progress, given=given)
        self.last_counts_ = store.counts
        return store

    def encode(self, items: pd.DataFrame, progress: bool = False) -> np.ndarray:
        """Aligned embeddings: float32 [len(items), dim], L2-normalised, rows in ``items`` order."""
        return embed_rows(self.model, self.store(items, progress=progress), progress=progress, device=self.device)

    def encode_raw(self, items: pd.DataFrame, progress: bool = False) -> np.ndarray:
        """Raw (pre-alignment) embeddings: float32 [len(items), d_raw], L2-normalised."""
        return self.store(items, progress=progress).raw

    def save(self, path: str | Path) -> None:
        save_torch(path, {"spec": self.spec, "state": self.model.state_dict()})


def build_model(spec: dict, in_dims: dict[str, int], live_towers: dict[str, torch.nn.Module]) -> AlignModel:
    return AlignModel(in_dims, live_towers, int(spec["hidden"]), int(spec["dim"]), spec["fusion"],
                      float(spec["modality_dropout"]), float(spec["dropout"]))


def load_item_encoder(run_dir: str | Path, device: torch.device | str = "cpu") -> ItemEncoder:
    """The encoder the ``align`` stage trained in ``run_dir`` (reads ``run_dir/align/encoder.pt``)."""
    path = Path(run_dir) / "align" / "encoder.pt"
    if not path.is_file():
        raise StageInputError(f"{path} is missing: run the 'align' stage first (qarm align CONFIG --out {run_dir})")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    spec = saved["spec"]
    raw_towers, size = load_towers(spec)
    for m in spec["modalities"]:
        if m not in ("audio", GIVEN) and m not in raw_towers:
            raise QarmError(f"{path}: the encoder was trained with a {m} tower that its spec no longer builds")
    live = {m: copy.deepcopy(raw_towers[m]) for m in spec["live"]}
    model = build_model(spec, {m: int(d) for m, d in spec["in_dims"].items()}, live)
    try:
        model.load_state_dict(saved["state"])
    except RuntimeError as exc:  # size mismatch: the towers now resolve to different weights/shapes
        first = str(exc).strip().splitlines()
        raise QarmError(f"{path}: saved weights do not fit the rebuilt encoder (dimension mismatch): "
                        f"{' '.join(first[1:3]) if len(first) > 1 else first[0]}") from None
    device = torch.device(device)
    model.eval().to(device)
    return ItemEncoder(spec, model, raw_towers, size, device)
