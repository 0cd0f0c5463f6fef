"""The prepare stage through the runner: artifact contract, split semantics, metrics; split units."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qarm.config import load_config
from qarm.data.config import SplitConfig
from qarm.data.schema import ITEMS_SCHEMA, SPLITS
from qarm.data.split import bucket_labels, check_split_config, draw_holdout, freq_buckets, split_events
from qarm.errors import ConfigError


def check_contract(run, label_columns=("click", "like")):
    """Everything docs/architecture.md promises about items.parquet / events.parquet."""
    items_t, events_t = pq.read_table(run / "items.parquet"), pq.read_table(run / "events.parquet")
    assert items_t.schema.remove_metadata().equals(ITEMS_SCHEMA)
    types = {f.name: f.type for f in events_t.schema}
    assert [types[c] for c in ("user_id", "item_id", "timestamp")] == [pa.int64()] * 3
    assert all(types[c] == pa.int8() for c in label_columns) and types["split"] == pa.string()
    items, events = items_t.to_pandas(), events_t.to_pandas()
    assert items["item_id"].is_monotonic_increasing and items["item_id"].is_unique
    assert events["timestamp"].is_monotonic_increasing
    assert set(events["split"]) <= set(SPLITS)
    m = json.loads((run / "metrics.json").read_text())["prepare"]
    t_train, t_valid = m["train_cutoff"], m["valid_cutoff"]
    ts, split = events["timestamp"], events["split"]
    assert (ts[split == "train"] < t_train).all()
    assert ts[split == "valid"].between(t_train, t_valid - 1).all() and (ts[split == "test"] >= t_valid).all()
    # strict item cold start: held-out items have no train/valid/test event at all
    held = set(items.loc[items["holdout"], "item_id"])
    assert not events.loc[events["item_id"].isin(held), "split"].isin(["train", "valid", "test"]).any()
    assert events.loc[~events["item_id"].isin(held), "split"].isin(["train", "valid", "test"]).all()
    assert (ts[split == "cold_test"] >= t_valid).all() and (ts[split == "cold_excluded"] < t_valid).all()
    # per-item flags
    train_count = events[split == "train"].groupby("item_id").size()
    assert (items["train_count"].to_numpy() == train_count.reindex(items["item_id"], fill_value=0).to_numpy()).all()
    first_seen = events.groupby("item_id")["timestamp"].min().reindex(items["item_id"])
    expect_cold = items["holdout"].to_numpy() | ~(first_seen < t_train).to_numpy()
    assert (items["cold"].to_numpy() == expect_cold).all()
    assert (items.loc[items["train_count"] == 0, "freq_bucket"] == "0").all()
    # figures
    assert m["n_items"] == len(items) and m["n_events"] == len(events)
    assert m["n_users"] == events["user_id"].nunique() and m["n_cold_items"] == int(items["cold"].sum())
    assert m["n_events_by_split"] == {s: int((split == s).sum()) for s in SPLITS}
    assert set(m["modality_coverage"]) == {"text", "image", "audio"} and isinstance(m["skipped"], dict)
    return items, events, m


def test_prepare_synthetic_via_runner(pipeline_run):
    run = pipeline_run("demo-fast", ["prepare"])
    items, events, m = check_contract(run)
    assert (m["n_items"], m["n_events"]) == (400, 15000)
    assert m["modality_coverage"] == {"text": 1.0, "image": 1.0, "audio": 1.0}
    assert m["n_holdout_items"] == 40 and m["n_events_by_split"]["cold_test"] > 0
    # late-introduced items are cold without being held out
    assert (items["cold"] & ~items["holdout"]).sum() > 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["prepare"]["rows"]["events.parquet"] == 15000


@pytest.mark.slow
def test_prepare_ml100k_via_runner(pipeline_run):
    items, events, m = check_contract(pipeline_run("ml100k-fast", ["prepare"]))
    assert events["rating"].dtype == np.float32
    assert m["n_holdout_items"] == 168 and m["n_events_by_split"]["cold_test"] > 500
    assert m["skipped"]["missing_image"] == 33 and m["modality_coverage"]["audio"] == 0.0


def test_bucket_labels_and_buckets():
    assert bucket_labels([0, 5, 20, 100]) == ["0", "1-4", "5-19", "20-99", "100+"]
    assert bucket_labels([2, 3]) == ["0", "1", "2", "3+"]
    got = freq_buckets(np.array([0, 1, 4, 5, 19, 20, 99, 100, 5000]), [0, 5, 20, 100])
    assert got.tolist() == ["0", "1-4", "1-4", "5-19", "5-19", "20-99", "20-99", "100+", "100+"]


def test_holdout_draw_is_seeded_and_sized():
    ids = np.arange(1, 1001)
    a, b, c = draw_holdout(ids, 0.1, 0), draw_holdout(ids, 0.1, 0), draw_holdout(ids, 0.1, 1)
    assert a.sum() == 100 and (a == b).all() and not (a == c).all()
    assert draw_holdout(ids, 0.0, 0).sum() == 0


@pytest.mark.parametrize("kw, key", [({"train_frac": 1.0}, "train_frac"), ({"valid_frac": 0.3}, "valid_frac"),
                                     ({"holdout_item_frac": 1.0}, "holdout_item_frac"),
                                     ({"freq_bucket_edges": [5, 5]}, "freq_bucket_edges")])
def test_bad_split_config(kw, key):
    with pytest.raises(ConfigError, match=key):
        check_split_config(SplitConfig(**{"train_frac": 0.8, **kw}))


def test_split_without_holdout_and_with_ties():
    items = pd.DataFrame({"item_id": np.arange(1, 6, dtype=np.int64)})
    events = pd.DataFrame({"user_id": np.arange(10, dtype=np.int64) % 3, "item_id": np.array([1, 2, 3, 1, 2, 3, 4, 4, 4, 5]),
                           "timestamp": np.array([5, 1, 1, 2, 3, 4, 6, 7, 8, 9], dtype=np.int64)})
    it, ev, info = split_events(items, events, SplitConfig(train_frac=0.6, valid_frac=0.2, holdout_item_frac=0.0), 0)
    assert ev["timestamp"].tolist() == sorted(events["timestamp"])
    assert info == {"train_cutoff": 6, "valid_cutoff": 8}
    assert ev["split"].tolist() == ["train"] * 6 + ["valid"] * 2 + ["test"] * 2
    assert it["cold"].tolist() == [False, False, False, True, True] and not it["holdout"].any()
    assert it["train_count"].tolist() == [2, 2, 2, 0, 0]


def test_config_rejects_unknown_data_key():
    with pytest.raises(ConfigError, match="valid keys of data: .*strict"):
        load_config(None, ["data.stirct=true"])
