"""Bad input through engine=spark: the local engine's errors (file, row, column) and skip counts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from qarm.config import load_config
from qarm.data.stage import prepare
from qarm.errors import DataError
from qarm.runner import RunDir

N_ITEMS = 6
# PySpark 4 warns that it does not fully support pandas 3 on every pandas UDF call
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _files(tmp_path, events: pd.DataFrame, suffix: str = "csv"):
    items = pd.DataFrame({"item_id": np.arange(1, N_ITEMS + 1), "title": [f"item {i}" for i in range(N_ITEMS)]})
    items.to_csv(tmp_path / "items.csv", index=False)
    path = tmp_path / f"events.{suffix}"
    if suffix == "csv":
        events.to_csv(path, index=False)
    else:
        events.to_parquet(path, index=False)
    return path


def _events(n: int = 24) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"user_id": rng.integers(1, 5, n), "item_id": rng.integers(1, N_ITEMS + 1, n),
                         "timestamp": 1_000_000 + np.arange(n) * 60, "click": rng.integers(0, 2, n),
                         "like": rng.integers(0, 2, n)}).astype(object)


def _cfg(tmp_path, events_path, strict: bool):
    return load_config(None, ["data.source=files", f"data.path={tmp_path}", "data.items_file=items.csv",
                              f"data.events_file={events_path.name}", f"data.strict={str(strict).lower()}",
                              "engine.name=spark", "split.holdout_item_frac=0.2"])


def _both_errors(spark, tmp_path, events, suffix="csv"):
    from qarm.engine.spark_prepare import prepare_spark

    path = _files(tmp_path, events, suffix)
    cfg = _cfg(tmp_path, path, strict=True)
    with pytest.raises(DataError) as local:
        prepare(cfg, tmp_path / "data-local", show_progress=False)
    with pytest.raises(DataError) as remote:
        prepare_spark(cfg, RunDir(tmp_path / "run-spark"), show_progress=False)
    return local.value, remote.value


def test_missing_column(spark, tmp_path):
    local, remote = _both_errors(spark, tmp_path, _events().drop(columns=["timestamp"]))
    assert str(remote) == str(local)
    assert remote.column == "timestamp" and "needs column(s) timestamp" in str(remote)


def test_unknown_item(spark, tmp_path):
    ev = _events()
    ev.loc[7, "item_id"] = 999
    ev.loc[15, "item_id"] = 998
    local, remote = _both_errors(spark, tmp_path, ev)
    assert str(remote) == str(local)
    assert (remote.row, remote.column) == (8, "item_id") and "(2 such rows" in str(remote)


def test_unparsable_timestamp(spark, tmp_path):
    ev = _events()
    ev.loc[3, "timestamp"] = "2021-02-30T10:00"   # no such day
    ev.loc[5, "timestamp"] = "2021-01-01T10:00:00Z"  # ISO-8601 is fine
    local, remote = _both_errors(spark, tmp_path, ev)
    assert str(remote) == str(local)
    assert (remote.row, remote.column) == (4, "timestamp")


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_label_not_0_or_1(spark, tmp_path, suffix):
    ev = _events()
    ev["like"] = ev["like"].astype(np.int64)
    ev.loc[11, "like"] = 2
    local, remote = _both_errors(spark, tmp_path, ev, suffix)
    assert str(remote) == str(local)
    assert (remote.row, remote.column) == (12, "like") and "label 'like' must be 0 or 1" in str(remote)


def test_skips_counted_like_local(spark, tmp_path):
    """strict=false: the same rows are dropped, counted under the same first reason, same output."""
    from qarm.engine.spark_prepare import prepare_spark
    from qarm.data.stage import events_table

    ev = _events(40)
    ev.loc[2, "item_id"] = 999            # unknown item
    ev.loc[4, "timestamp"] = "yesterday"  # unparsable
    ev.loc[6, "click"] = 3                # not 0/1
    ev.loc[8, "like"] = "maybe"           # not 0/1
    ev.loc[9, "user_id"] = "u9"           # not an integer
    ev.loc[10, "user_id"] = "u10"         # first reason wins: bad user, not unknown item
    ev.loc[10, "item_id"] = 999
    path = _files(tmp_path, ev)
    cfg = _cfg(tmp_path, path, strict=False)
    local = prepare(cfg, tmp_path / "data-local", show_progress=False)
    run = RunDir(tmp_path / "run-spark")
    metrics = prepare_spark(cfg, run, show_progress=False)
    assert dict(local.skipped) == metrics["skipped"] == {"bad_user_id": 2, "unparsable_timestamp": 1,
                                                          "bad_label": 2, "unknown_item": 1, "empty_text": 0}
    want = events_table(local.events, cfg.data.label_columns).to_pandas()
    got = pq.read_table(run / "events.parquet").to_pandas()
    pd.testing.assert_frame_equal(got, want)
    assert metrics["n_events"] == len(want) == 34
