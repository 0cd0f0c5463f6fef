"""Fine-tuning modes (partial, full, LoRA), the joint CLIP-like path and the transformer fusion.

Each runs the real stage on the demo-fast inputs with a tiny BERT / tiny CLIP built from a config
(random weights, never downloaded) and 32 px images, on a seeded sample of the pairs: the same code
paths as the real towers, at a size that trains in seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from align_helpers import TEST_CONFIGS

from qarm.align.encoder import load_item_encoder, load_towers
from qarm.align.stage import run_align
from qarm.config import load_config
from qarm.io import read_parquet
from qarm.runner import RunDir

TINY = ["align.max_pairs=96", "align.batch_size=32", "align.epochs=1", "align.image_size=32", "align.hidden=32",
        "align.dim=16", "align.lr=0.01", "align.tower_lr=0.01"]


def _run(run, sets) -> tuple[dict, object]:
    cfg = load_config(TEST_CONFIGS / "demo-fast.yaml", TINY + sets)
    metrics = run_align(cfg, RunDir(run))
    return metrics, load_item_encoder(run)


def _changed(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def _check_export(run, enc, metrics, n=12):
    items = read_parquet(run / "items.parquet").iloc[:n]
    aligned = np.load(run / "emb_aligned.npy")
    assert aligned.shape[1] == metrics["dim"] == 16 and np.isfinite(aligned).all()
    np.testing.assert_allclose(enc.encode(items), aligned[:n], atol=1e-4)


@pytest.mark.parametrize("mode", ["partial", "full"])
def test_partial_and_full_fine_tuning(demo_copy, tiny_bert, mode):
    metrics, enc = _run(demo_copy, [f"align.mode={mode}", f"align.text_model={tiny_bert}"])
    assert metrics["mode"] == mode
    raw_text, tuned_text = enc.raw_towers["text"].hf, enc.model.towers["text"].hf
    raw_img, tuned_img = enc.raw_towers["image"].backbone, enc.model.towers["image"].backbone
    assert _changed(raw_text.encoder.layer[-1], tuned_text.encoder.layer[-1])
    assert _changed(raw_img._blocks[-1], tuned_img._blocks[-1]) and _changed(raw_img._conv_head, tuned_img._conv_head)
    bottom_text_changed = _changed(raw_text.embeddings, tuned_text.embeddings)
    bottom_img_changed = _changed(raw_img._blocks[0], tuned_img._blocks[0])
    assert bottom_text_changed == bottom_img_changed == (mode == "full")  # partial: only the top block trains
    _check_export(demo_copy, enc, metrics)


def test_lora_on_text_tower(demo_copy, tiny_bert):
    metrics, enc = _run(demo_copy, ["align.mode=lora", f"align.text_model={tiny_bert}", "align.lora_r=4"])
    assert list(enc.model.towers) == ["text"]  # the image tower stays frozen (cached features)
    tuned = enc.model.towers["text"].hf
    assert not any("lora" in k for k in tuned.state_dict())  # adapters merged into plain weights
    raw = enc.raw_towers["text"].hf
    layer = -1
    assert not torch.equal(raw.encoder.layer[layer].attention.self.query.weight,
                           tuned.encoder.layer[layer].attention.self.query.weight)
    assert torch.equal(raw.encoder.layer[layer].attention.self.key.weight,  # not a LoRA target: untouched
                       tuned.encoder.layer[layer].attention.self.key.weight)
    _check_export(demo_copy, enc, metrics)


def test_joint_clip_towers_with_transformer_fusion(demo_copy, tiny_clip):
    metrics, enc = _run(demo_copy, [f"align.joint_model={tiny_clip}", "align.fusion=transformer"])
    assert metrics["modalities"] == ["text", "image", "audio"] and metrics["fusion"] == "transformer"
    assert metrics["raw_dim"] == 24 + 24 + 2 * 64
    towers, size = load_towers(enc.spec)
    assert size == 32 and type(towers["text"]).__name__ == "JointTextTower"
    _check_export(demo_copy, enc, metrics)
    assert 0.0 <= metrics["aligned.recall@50"] <= 1.0 and metrics["n_valid_pairs"] > 100
