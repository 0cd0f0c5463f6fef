"""The retrieve stage: a synthetic run directory (fast) and the real MovieLens 100K pipeline (slow)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from qarm.cli import main as cli_main
from qarm.config import load_config
from qarm.errors import ConfigError
from qarm.io import read_json, write_npy, write_parquet
from qarm.quant.stage import codes_table
from qarm.retrieve.sequences import leave_one_out, windows
from qarm.runner import run_stages

METHODS = ("aligned_codes", "raw_codes", "sasrec", "popularity")
FAST = ["retrieve.enabled=true", "retrieve.epochs=2", "retrieve.dim=16", "retrieve.layers=1", "retrieve.max_len=6",
        "retrieve.beam_size=10", "retrieve.ks=[1,5,10]", "retrieve.dropout=0.0", "retrieve.device=cpu",
        "quantize.rq_sizes=[4,4]", "quantize.rq_iters=5"]


def _synthetic_run(path, n_items=40, n_users=50, seed=0):
    """items/events/codes/emb_raw for a catalogue where users walk item -> item + 1; items 35.. held out."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n_items, dtype=np.int64) * 10 + 7  # ids are not rows
    holdout = np.arange(n_items) >= 35
    items = pd.DataFrame({"item_id": ids, "holdout": holdout, "train_count": np.ones(n_items, np.int64),
                          "freq_bucket": np.where(np.arange(n_items) % 2 == 0, "1-4", "5-19")})
    rows = []
    for u in range(n_users):
        start = rng.integers(n_items)
        for t in range(rng.integers(4, 9)):
            item = (start + t) % n_items
            rows.append((u, ids[item], 1000 * u + t, "cold_test" if holdout[item] else "train", 1))
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "split", "click"])
    emb = rng.normal(size=(n_items, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    codes = np.stack([np.arange(n_items) // 8, np.arange(n_items) % 4], 1)
    write_parquet(path / "items.parquet", pa.Table.from_pandas(items, preserve_index=False))
    write_parquet(path / "events.parquet", pa.Table.from_pandas(events, preserve_index=False))
    write_parquet(path / "codes.parquet", codes_table(ids, np.zeros((n_items, 1), np.int32), codes))
    write_npy(path / "emb_raw.npy", emb)
    return items, events


def test_leave_one_out_keeps_held_out_items_out_of_training():
    ids = np.array([1, 2, 3, 4], np.int64)
    holdout = np.array([False, False, False, True])
    ev = pd.DataFrame({"user_id": [9, 9, 9, 9, 9, 8, 8, 7, 7, 7],
                       "item_id": [1, 4, 2, 3, 4, 1, 2, 1, 2, 3],
                       "timestamp": [1, 2, 3, 4, 5, 1, 2, 3, 2, 1],
                       "split": ["train", "cold_test", "train", "valid", "cold_test", "train", "train", "test",
                                 "train", "cold_excluded"],
                       "click": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]})
    s = leave_one_out(ev, ids, holdout)
    np.testing.assert_array_equal(s.users, [9])  # user 8 has 2 events, user 7 two after cold_excluded
    np.testing.assert_array_equal(s.test_target, [3])  # item 4 (row 3): a held-out item as test target
    np.testing.assert_array_equal(s.valid_target, [2])  # item 3
    np.testing.assert_array_equal(s.train[0], [0, 1])  # the earlier held-out event is dropped, counted
    np.testing.assert_array_equal(s.test_hist[0], [0, 1, 2])
    assert s.counts["n_holdout_events_dropped"] == 1 and s.counts["n_users_too_short"] == 2
    assert s.counts["n_events_cold_excluded"] == 1
    assert [w.tolist() for w in windows([np.arange(7)], 3)] == [[4, 5, 6], [2, 3, 4], [0, 1, 2]]


def test_retrieve_stage_metrics_layout_determinism_and_cli(tmp_path):
    _synthetic_run(tmp_path)
    cfg = load_config(None, FAST + ["retrieve.seeds=[0,1]"])
    m = run_stages(cfg, tmp_path, stages=["retrieve"], log=lambda s: None)["retrieve"]
    assert m["n_test_users"] + m["n_users_too_short"] == 50 and m["n_test_users"] > 40
    assert m["n_cold_test_users"] > 0 and m["n_holdout_events_dropped"] > 0
    for method in METHODS:
        for key in ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "cold_recall@10"):
            fig = m[method][key]
            value = fig if method == "popularity" else fig["mean"]  # popularity has one "seed"
            assert 0.0 <= value <= 1.0, (method, key, fig)
        assert set(m[method]["recall_by_k"]) == {"1", "5", "10"}
        assert set(m[method]["recall@10_by_bucket"]) <= {"1-4", "5-19"}
    assert m["popularity"]["cold_recall@10"] == 0.0  # held-out items are never in training: count 0
    assert (tmp_path / "retrieve" / "raw_codes" / "seed1" / "checkpoint.pt").exists()
    # same config and seed -> the same figures (timings aside)
    again = tmp_path / "again"
    again.mkdir()
    for name in ("items.parquet", "events.parquet", "codes.parquet", "emb_raw.npy"):
        shutil.copy(tmp_path / name, again / name)
    m2 = run_stages(cfg, again, stages=["retrieve"], log=lambda s: None)["retrieve"]

    def strip(tree):
        return {k: strip(v) if isinstance(v, dict) else v for k, v in tree.items()
                if not k.endswith("_s") and k != "wall_s"}
    assert strip(m) == strip(m2)
    # the CLI command comes from the stage registration; the same config finds the stage up to date
    (tmp_path / "defaults.yaml").write_text("{}\n")
    before = read_json(again / "manifest.json")["stages"]["retrieve"]
    rc = cli_main(["retrieve", str(tmp_path / "defaults.yaml"), "--out", str(again)]
                  + [a for s in FAST + ["retrieve.seeds=[0,1]"] for a in ("--set", s)])
    assert rc == 0 and read_json(again / "manifest.json")["stages"]["retrieve"] == before


def test_retrieve_disabled_by_default_and_bad_config(tmp_path):
    _synthetic_run(tmp_path)
    assert run_stages(load_config(None), tmp_path, stages=["retrieve"], log=lambda s: None)["retrieve"] == \
        {"enabled": False}
    with pytest.raises(ConfigError, match="retrieve.methods"):
        load_config(None, ["retrieve.methods=[bm25]"])
    with pytest.raises(ConfigError, match="retrieve.ks"):
        load_config(None, ["retrieve.ks=[50]"])
