"""The align stage on the synthetic world and on real ml-100k: artifacts, figures, the encoder API."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from align_helpers import TEST_CONFIGS

from qarm.align.encoder import load_item_encoder
from qarm.align.stage import run_align
from qarm.config import load_config
from qarm.errors import ConfigError, DataError, StageInputError
from qarm.io import read_parquet, write_parquet
from qarm.runner import RunDir

KEYS = ("raw.recall@10", "raw.recall@50", "aligned.recall@10", "aligned.recall@50", "mode", "dim", "epochs",
        "missing_text", "missing_image", "corrupt_image", "missing_audio", "corrupt_audio", "n_valid_pairs")


def _load(run):
    metrics = json.loads((run / "metrics.json").read_text())["align"]
    items = read_parquet(run / "items.parquet")
    return metrics, items, np.load(run / "emb_raw.npy"), np.load(run / "emb_aligned.npy")


def _check_embeddings(items, raw, aligned, dim):
    assert raw.dtype == aligned.dtype == np.float32
    assert aligned.shape == (len(items), dim) and raw.shape[0] == len(items)
    for emb in (raw, aligned):
        assert np.isfinite(emb).all()
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_demo_metrics_and_artifacts(demo_run):
    m, items, raw, aligned = _load(demo_run)
    assert all(k in m for k in KEYS + ("raw.business_nmi", "aligned.business_nmi"))
    assert m["mode"] == "head" and m["epochs"] == 5 and m["modalities"] == ["text", "image", "audio"]
    _check_embeddings(items, raw, aligned, m["dim"])
    assert raw.shape[1] == 384 + 1280 + 2 * 64  # MiniLM + EfficientNet-Lite0 + log-mel band statistics
    assert m["n_valid_pairs"] > 100 and m["n_train_pairs"] == m["n_pairs_u2i"] + m["n_pairs_i2i"]
    assert m["aligned.business_nmi"] > m["raw.business_nmi"] + 0.03
    assert m["aligned.recall@50"] > m["raw.recall@50"] + 0.05
    assert m["loss_history"][-1] < m["loss_history"][0]
    assert (demo_run / "align" / "encoder.pt").is_file() and (demo_run / "align" / "checkpoint.pt").is_file()
    cache = sorted(p.name.split("-")[0] for p in (demo_run / "align" / "cache").glob("*.npz"))
    assert cache == ["audio", "image", "text"]


def test_encoder_reproduces_exported_embeddings(demo_run):
    _, items, raw, aligned = _load(demo_run)
    enc = load_item_encoder(demo_run)
    rows = np.r_[0:20, len(items) - 20:len(items)]
    sub = items.iloc[rows]
    np.testing.assert_allclose(enc.encode(sub), aligned[rows], atol=1e-4)
    np.testing.assert_allclose(enc.encode_raw(sub), raw[rows], atol=1e-4)


def test_encoder_new_items_with_missing_and_corrupt_modalities(demo_run, tmp_path):
    _, items, _, aligned = _load(demo_run)
    enc = load_item_encoder(demo_run)
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    new = items.iloc[:4][["item_id", "text", "image", "audio"]].copy()
    new["item_id"] = [90001, 90002, 90003, 90004]
    new.loc[new.index[1], "image"] = str(corrupt)
    new.loc[new.index[2], "text"] = ""
    new.loc[new.index[3], "audio"] = None
    out = enc.encode(new)
    assert out.shape == (4, enc.dim) and np.isfinite(out).all()
    assert enc.last_counts_["corrupt_image"] == 1 and enc.last_counts_["empty_text"] == 1
    assert enc.last_counts_["missing_audio"] == 1
    np.testing.assert_allclose(out[0], aligned[0], atol=1e-4)  # intact item: same as its exported row
    title_only = enc.encode(pd.DataFrame({"item_id": [1], "title": ["a documentary about whales"]}))
    assert title_only.shape == (1, enc.dim)
    with pytest.raises(DataError, match="column 'text'"):
        enc.encode(pd.DataFrame({"item_id": [1]}))


def test_stage_input_errors(demo_copy):
    cfg = load_config(TEST_CONFIGS / "demo-fast.yaml")
    pairs = read_parquet(demo_copy / "pairs.parquet")
    pairs.loc[3, "target_id"] = 987654
    write_parquet(demo_copy / "pairs.parquet", pairs)
    with pytest.raises(DataError, match=r"pairs.parquet, row 3, column 'target_id': item id 987654"):
        run_align(cfg, RunDir(demo_copy))
    with pytest.raises(ConfigError, match="align.image_size"):
        run_align(load_config(TEST_CONFIGS / "demo-fast.yaml", ["align.image_size=100"]), RunDir(demo_copy))
    (demo_copy / "pairs.parquet").unlink()
    with pytest.raises(StageInputError, match="run the 'pairs' stage first"):
        run_align(cfg, RunDir(demo_copy))
    with pytest.raises(StageInputError, match="run the 'align' stage first"):
        load_item_encoder(demo_copy)


def test_ml100k_aligned_beats_raw(ml_run):
    m, items, raw, aligned = _load(ml_run)
    assert all(k in m for k in KEYS) and "raw.business_nmi" not in m  # no ground truth on real data
    assert len(items) == 1682 and m["modalities"] == ["text", "image"]
    _check_embeddings(items, raw, aligned, m["dim"])
    assert raw.shape[1] == 384 + 1280
    assert m["missing_image"] == 33 and m["missing_text"] == 0 and m["items_without_content"] == 0
    assert m["n_valid_pairs"] > 3000
    # the behaviour-aligned space retrieves held-out (valid-split) targets far better than raw content
    assert m["aligned.recall@10"] > 1.5 * m["raw.recall@10"]
    assert m["aligned.recall@50"] > 1.5 * m["raw.recall@50"]
    # cold and held-out items (no behaviour) still get an embedding from their content
    cold = items["cold"].to_numpy()
    assert cold.sum() > 100 and np.isfinite(aligned[cold]).all()
