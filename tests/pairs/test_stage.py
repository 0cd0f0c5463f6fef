"""The pairs stage on real MovieLens 100K and on the synthetic world; no leakage from valid/test/cold."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from qarm.config import load_config
from qarm.io import read_npy, write_parquet
from qarm.pairs.stage import run_pairs
from qarm.runner import RunDir

TEST_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def ml_run(pipeline_run, ml100k_path):
    return pipeline_run("ml100k-fast", ["prepare", "pairs"])


def test_ml100k_pairs_artifact_contract(ml_run):
    table = pq.read_table(ml_run / "pairs.parquet")
    assert [(f.name, str(f.type)) for f in table.schema] == [
        ("trigger_id", "int64"), ("target_id", "int64"), ("source", "string"), ("score", "float")]
    pairs = table.to_pandas()
    assert set(pairs["source"]) == {"u2i", "i2i"}
    assert (pairs["trigger_id"] != pairs["target_id"]).all()
    lo = np.minimum(pairs["trigger_id"], pairs["target_id"])
    hi = np.maximum(pairs["trigger_id"], pairs["target_id"])
    assert not pd.DataFrame({"lo": lo, "hi": hi}).duplicated().any()       # unordered duplicates removed
    items = pd.read_parquet(ml_run / "items.parquet")
    assert set(pairs["trigger_id"]) | set(pairs["target_id"]) <= set(items["item_id"])
    # held-out items have no train events, so they can never be paired
    assert not (set(pairs["trigger_id"]) | set(pairs["target_id"])) & set(items.loc[items["holdout"], "item_id"])
    emb = read_npy(ml_run / "pairs" / "u2i_item_emb.npy")
    assert emb.shape == (len(items), 64) and emb.dtype == np.float32
    trained = items["train_count"].to_numpy() > 0
    assert (np.abs(emb[items["holdout"].to_numpy()]).sum(axis=1) == 0).all()
    # u2i scores are cosines in that space (items order = embedding rows)
    u2i = pairs[pairs["source"] == "u2i"].head(200)
    row = pd.Series(np.arange(len(items)), index=items["item_id"])
    cos = (emb[row[u2i["trigger_id"]].to_numpy()] * emb[row[u2i["target_id"]].to_numpy()]).sum(axis=1)
    np.testing.assert_allclose(cos, u2i["score"].to_numpy(), atol=1e-5)
    assert trained.sum() > 1000


def test_ml100k_metrics(ml_run):
    m = json.loads((ml_run / "metrics.json").read_text())["pairs"]
    for key in ("n_u2i", "n_i2i", "item_coverage", "u2i_recall@10", "u2i_recall@50", "u2i_recall@100",
                "popularity_recall@50", "n_duplicate_events", "n_users_single_event", "n_items_never_positive"):
        assert key in m, key
    assert m["n_u2i"] > 5000 and m["n_i2i"] > 5000
    assert 0.5 < m["item_coverage"] <= 1.0
    assert m["u2i_recall@10"] <= m["u2i_recall@50"] <= m["u2i_recall@100"]
    assert m["u2i_recall@50"] > m["popularity_recall@50"]   # the behaviour model beats popularity
    assert "same_business_cluster" not in m                   # no ground truth on real data
    # the test split: each test user's first test positive, train and valid positives as history
    assert m["n_test_users"] > 100 and m["n_test_users_scored"] == m["n_test_users"]
    for model in ("u2i", "popularity"):
        r = [m[f"{model}_test_recall@{k}"] for k in (10, 50, 100)]
        assert 0 <= r[0] <= r[1] <= r[2] <= 1, (model, r)
    assert m["u2i_test_recall@100"] != m["u2i_recall@100"]


def test_synthetic_pairs_carry_business_signal_content_misses(pipeline_run):
    run = pipeline_run("demo-fast", ["prepare", "pairs"])
    m = json.loads((run / "metrics.json").read_text())["pairs"]
    sbc = m["same_business_cluster"]
    assert sbc["mined"] > 3 * sbc["random"]
    assert sbc["mined"] > sbc["content_nn"] + 0.2
    assert m["same_topic"]["content_nn"] > m["same_topic"]["mined"]   # content pairs follow topics instead
    assert "TF-IDF" in m["content_space"]


def test_nothing_from_valid_test_or_cold_leaks_in(ml_run, ml100k_path, tmp_path):
    """Scramble every non-train event (items, labels, timestamps; add fake users): identical output."""
    events = pd.read_parquet(ml_run / "events.parquet")
    other = events["split"] != "train"
    assert other.sum() > 10_000
    rng = np.random.default_rng(0)
    scrambled = events.copy()
    scrambled.loc[other, "item_id"] = rng.permutation(events.loc[other, "item_id"].to_numpy())
    scrambled.loc[other, "click"] = (1 - events.loc[other, "click"]).astype(np.int8)
    fake = events[other].head(3000).assign(user_id=lambda d: d["user_id"] + 10**6, click=np.int8(1))
    scrambled = pd.concat([scrambled, fake], ignore_index=True).sort_values("timestamp", kind="stable")
    cfg = load_config(TEST_CONFIGS / "ml100k-fast.yaml", [f"data.path={ml100k_path}", "pairs.u2i_epochs=1"])
    outputs = []
    for name, table in (("original", events), ("scrambled", scrambled)):
        run = RunDir(tmp_path / name)
        shutil.copy(ml_run / "items.parquet", run / "items.parquet")
        write_parquet(run / "events.parquet", table)
        run_pairs(cfg, run)
        outputs.append((pd.read_parquet(run / "pairs.parquet"), read_npy(run / "pairs" / "u2i_item_emb.npy")))
    pd.testing.assert_frame_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
