"""Bad input: clear errors naming file/row/column; useless input counted, never silently dropped."""

import numpy as np
import pandas as pd
import pytest

from qarm.cli import main
from qarm.config import load_config
from qarm.errors import DataError
from qarm.io import write_parquet
from qarm.pairs.inputs import load_positives
from qarm.pairs.stage import run_pairs
from qarm.runner import RunDir


def tiny_world(n_users=40, n_items=30, seed=0):
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1, dtype=np.int64),
                          "text": [f"item {i}" for i in range(n_items)]})
    n = 600
    events = pd.DataFrame({
        "user_id": rng.integers(0, n_users, n).astype(np.int64),
        "item_id": rng.integers(1, n_items - 2, n).astype(np.int64),   # the last 3 items never clicked
        "timestamp": np.sort(rng.integers(0, 10**6, n)).astype(np.int64),
        "click": (rng.random(n) < 0.8).astype(np.int8),
    })
    events["split"] = np.where(np.arange(n) < 480, "train", np.where(np.arange(n) < 540, "valid", "test"))
    return items, events


def test_counts_duplicates_single_event_users_and_never_positive_items():
    items, events = tiny_world()
    extra = pd.DataFrame({"user_id": [999, 7], "item_id": [5, 9], "timestamp": [10, 11], "click": [1, 1],
                          "split": ["train", "train"]})
    events = pd.concat([events, extra, events.iloc[[0, 0, 1]]], ignore_index=True)  # user 999: one event
    dup_expected = int((events.iloc[[0, 1]]["click"] == 1).sum() + (events.iloc[0]["click"] == 1))
    pos = load_positives(items, events, "click", "train", "items.parquet", "events.parquet")
    assert pos.counts["n_duplicate_events"] == dup_expected
    assert pos.counts["n_users_single_event"] >= 1
    assert pos.counts["n_items_never_positive"] >= 3
    assert len(set(zip(pos.user, pos.item, pos.time))) == len(pos.user)


@pytest.mark.parametrize("breakage, match", [
    (lambda e: e.drop(columns=["timestamp"]), "column 'timestamp'"),
    (lambda e: e.assign(item_id=e["item_id"].where(e.index != 3, 12345)), r"row 3, column 'item_id'"),
    (lambda e: e.assign(click=e["click"].where(e.index != 5, 7)), r"row 5, column 'click'"),
    (lambda e: e.assign(user_id=e["user_id"].astype(float).where(e.index != 2)), r"row 2, column 'user_id'"),
])
def test_bad_events_name_file_row_and_column(breakage, match):
    items, events = tiny_world()
    with pytest.raises(DataError, match=match) as err:
        load_positives(items, breakage(events), "click", "train", "items.parquet", "run/events.parquet")
    assert "run/events.parquet" in str(err.value)


def test_unsorted_items_and_unknown_label_column():
    items, events = tiny_world()
    with pytest.raises(DataError, match="sorted by item_id"):
        load_positives(items.iloc[::-1], events, "click", "train", "items.parquet", "events.parquet")
    with pytest.raises(DataError, match="pairs.label"):
        load_positives(items, events, "purchase", "train", "items.parquet", "events.parquet")


def test_stage_reports_skipped_input_and_cli_prints_one_line(tmp_path, capsys):
    items, events = tiny_world()
    run = RunDir(tmp_path / "run")
    write_parquet(run / "items.parquet", items)
    write_parquet(run / "events.parquet", pd.concat([events, events.iloc[:4]], ignore_index=True))
    cfg = load_config(None, ["pairs.u2i_epochs=1", "pairs.u2i_dim=8"])
    m = run_pairs(cfg, run)
    assert m["n_duplicate_events"] == int(events.iloc[:4].query("split == 'train' and click == 1").shape[0])
    for key in ("n_users_single_event", "n_items_never_positive", "n_events_without_trigger"):
        assert key in m
    assert m["n_items_never_positive"] >= 3
    # an event whose item is not in the catalogue: one clear line, exit code 2, no traceback
    bad = events.copy()
    bad.loc[7, "item_id"] = 777
    write_parquet(run / "events.parquet", bad)
    config = tmp_path / "cfg.yaml"
    config.write_text("name: bad-input\npairs:\n  u2i_epochs: 1\n")
    code = main(["pairs", str(config), "--out", str(run.path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "item_id 777" in err and "row 7" in err and "events.parquet" in err and "Traceback" not in err
