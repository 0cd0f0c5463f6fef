"""Bring your own item embeddings (issue 14 item 3): a frozen 'given' feature, the head trains on top,
no text or image tower runs; new items bring their own vector at assign/serve time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from align_helpers import TEST_CONFIGS

import qarm.align.encoder as encoder_mod
from qarm.align.encoder import load_item_encoder
from qarm.align.stage import run_align
from qarm.config import load_config
from qarm.errors import ConfigError, DataError
from qarm.io import read_parquet
from qarm.runner import RunDir

DIM = 24


def _vectors(run, seed=0):
    """Item vectors that carry the synthetic world's business cluster weakly, plus noise."""
    items = read_parquet(run / "items.parquet")
    truth = read_parquet(run / "data" / "ground_truth.parquet").set_index("item_id")["business"]
    business = truth.reindex(items["item_id"]).to_numpy()
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(business.max() + 1, DIM))
    vec = (0.5 * centres[business] + rng.normal(size=(len(items), DIM))).astype(np.float32)
    return items, vec


def _fail_towers(*a, **k):
    raise AssertionError("a pretrained tower was loaded although item embeddings were given")


def test_npy_embeddings_train_the_head_without_towers(demo_copy, tmp_path, monkeypatch):
    items, vec = _vectors(demo_copy)
    order = np.random.default_rng(1).permutation(len(items))  # the file's row order is its own
    np.save(tmp_path / "emb.npy", vec[order])
    np.save(tmp_path / "ids.npy", items["item_id"].to_numpy()[order])
    for name in ("load_text_tower", "load_image_tower", "load_joint_towers"):
        monkeypatch.setattr(encoder_mod, name, _fail_towers)
    cfg = load_config(TEST_CONFIGS / "demo-fast.yaml", [f"align.item_embeddings={tmp_path / 'emb.npy'}",
                                                        f"align.item_embedding_ids={tmp_path / 'ids.npy'}"])
    m = run_align(cfg, RunDir(demo_copy))
    assert m["modalities"] == ["given"] and m["raw_dim"] == DIM and m["missing_given"] == 0
    raw, aligned = np.load(demo_copy / "emb_raw.npy"), np.load(demo_copy / "emb_aligned.npy")
    np.testing.assert_allclose(raw, vec / np.linalg.norm(vec, axis=1, keepdims=True), atol=1e-6)
    assert aligned.shape == (len(items), cfg.align.dim)
    assert m["aligned.recall@50"] > m["raw.recall@50"]  # the head learned something from behaviour
    enc = load_item_encoder(demo_copy)
    rows = np.array([0, 5, 77, 399])
    assert np.array_equal(enc.encode(items.iloc[rows]), aligned[rows])  # looked up in the .npy by id
    # a new item brings its vector in the frame's list column (as qarm assign / the service receive it)
    frame = pd.DataFrame({"item_id": [10**9, int(items["item_id"].iloc[5])],
                          "embedding": [vec[77].tolist(), vec[5].tolist()]})
    got = enc.encode(frame)
    assert np.array_equal(got[1], aligned[5])
    assert np.array_equal(got[0], enc.encode(items.iloc[[77]])[0])  # content = the vector, not the id
    with pytest.raises(DataError, match=r"row 0, column 'embedding': embedding has 3 values, expected"):
        enc.encode(pd.DataFrame({"item_id": [1], "embedding": [[0.1, 0.2, 0.3]]}))


def test_parquet_list_column_with_a_missing_item(demo_copy, tmp_path):
    items, vec = _vectors(demo_copy)
    keep = np.arange(len(items)) != 10  # item 10 has no vector: placeholder, counted, not dropped
    table = pa.table({"item_id": items["item_id"].to_numpy()[keep],
                      "vec": pa.FixedSizeListArray.from_arrays(pa.array(vec[keep].reshape(-1)), DIM)})
    pq.write_table(table, tmp_path / "emb.parquet")
    cfg = load_config(TEST_CONFIGS / "demo-fast.yaml", [f"align.item_embeddings={tmp_path / 'emb.parquet'}",
                                                        "align.item_embedding_column=vec", "align.epochs=1"])
    m = run_align(cfg, RunDir(demo_copy))
    assert m["missing_given"] == 1 and m["items_without_content"] == 1
    aligned = np.load(demo_copy / "emb_aligned.npy")
    assert np.isfinite(aligned).all() and aligned.shape[0] == len(items)


def test_given_embedding_config_errors(demo_copy, tmp_path):
    np.save(tmp_path / "emb.npy", np.ones((3, 4), np.float32))
    with pytest.raises(ConfigError, match="item_embedding_ids"):
        run_align(load_config(TEST_CONFIGS / "demo-fast.yaml", [f"align.item_embeddings={tmp_path / 'emb.npy'}"]),
                  RunDir(demo_copy))
    with pytest.raises(ConfigError, match="mode head"):
        run_align(load_config(TEST_CONFIGS / "demo-fast.yaml", [f"align.item_embeddings={tmp_path / 'emb.npy'}",
                                                                "align.mode=partial"]), RunDir(demo_copy))
    np.save(tmp_path / "ids.npy", np.arange(5))
    with pytest.raises(DataError, match="expected float"):
        run_align(load_config(TEST_CONFIGS / "demo-fast.yaml", [f"align.item_embeddings={tmp_path / 'emb.npy'}",
                                                                f"align.item_embedding_ids={tmp_path / 'ids.npy'}"]),
                  RunDir(demo_copy))
    bad = np.ones((3, 4), np.float32)
    bad[1, 2] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    np.save(tmp_path / "ids3.npy", np.arange(3))
    with pytest.raises(DataError, match="row 1: embedding has NaN"):
        run_align(load_config(TEST_CONFIGS / "demo-fast.yaml", [f"align.item_embeddings={tmp_path / 'bad.npy'}",
                                                                f"align.item_embedding_ids={tmp_path / 'ids3.npy'}"]),
                  RunDir(demo_copy))
