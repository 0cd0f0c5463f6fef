"""engine=spark against engine=local on real MovieLens 100K: same split, same pairs, same scores.

Both runs go through ``qarm run configs/movielens-100k.yaml --stages prepare,pairs`` (the CLI, in
this process, so the Spark run uses the session fixture), with one U2I epoch to keep CI fast; the
U2I model is PyTorch in both engines, the Spark one reading the positives Spark wrote.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from qarm.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]
FAST = ["--set", "pairs.u2i_epochs=1"]


@pytest.fixture(scope="module")
def runs(spark, ml100k_path, tmp_path_factory):
    out = {}
    for engine in ("local", "spark"):
        d = tmp_path_factory.mktemp(f"ml100k-{engine}")
        argv = ["run", "movielens-100k", "--out", str(d), "--stages", "prepare,pairs",
                "--set", f"data.path={ml100k_path}", "--set", f"engine.name={engine}",
                "--set", "engine.spark_master=local[2]", *FAST]
        assert main(argv) == 0
        out[engine] = d
    return out


def _metrics(run, stage):
    m = json.loads((run / "metrics.json").read_text())[stage]
    m.pop("engine", None)
    return m


def test_same_split_label_for_every_event(runs):
    local = pq.read_table(runs["local"] / "events.parquet")
    spark = pq.read_table(runs["spark"] / "events.parquet")
    assert (runs["spark"] / "events.parquet").is_dir()  # a Parquet dataset: sorted part files
    assert spark.num_rows == local.num_rows == 100_000
    assert spark.column_names == local.column_names
    # same rows in the same order (timestamp, user, item), every column, the split label included
    pd.testing.assert_frame_equal(spark.to_pandas(), local.to_pandas())
    assert pq.read_table(runs["spark"] / "items.parquet").equals(pq.read_table(runs["local"] / "items.parquet"))
    assert _metrics(runs["spark"], "prepare") == _metrics(runs["local"], "prepare")


def test_same_pairs_and_scores(runs):
    local = pq.read_table(runs["local"] / "pairs.parquet").to_pandas()
    spark = pq.read_table(runs["spark"] / "pairs.parquet").to_pandas()
    assert len(local) > 10_000 and set(local["source"]) == {"u2i", "i2i"}
    key = ["trigger_id", "target_id", "source"]
    pd.testing.assert_frame_equal(spark[key], local[key])  # same set of pairs, same order
    np.testing.assert_allclose(spark["score"], local["score"], rtol=0, atol=1e-6)
    assert spark["score"].dtype == local["score"].dtype == np.float32
    ml, ms = _metrics(runs["local"], "pairs"), _metrics(runs["spark"], "pairs")
    assert ms == ml  # positives, duplicates, U2I recall, triggers, Swing repeats, coverage
    emb_l = np.load(runs["local"] / "pairs" / "u2i_item_emb.npy")
    emb_s = np.load(runs["spark"] / "pairs" / "u2i_item_emb.npy")
    np.testing.assert_array_equal(emb_s, emb_l)  # the PyTorch U2I saw the same training data
    train = pq.read_table(runs["spark"] / "pairs" / "positives_train.parquet")
    assert train.num_rows == ml["n_positives"]


def test_rerun_is_cached_and_engine_switch_reruns(runs, ml100k_path, capsys):
    base = ["run", "movielens-100k", "--out", str(runs["spark"]), "--stages", "prepare,pairs",
            "--set", f"data.path={ml100k_path}", "--set", "engine.spark_master=local[2]", *FAST]
    assert main(base + ["--set", "engine.name=spark"]) == 0
    assert capsys.readouterr().out.count("up to date") == 2
    from qarm.config import load_config
    from qarm.runner import STAGE_BY_NAME

    a = load_config("movielens-100k", ["engine.name=local"])
    b = load_config("movielens-100k", ["engine.name=spark"])
    for stage in ("prepare", "pairs"):
        sections = STAGE_BY_NAME[stage].sections
        assert "engine" in sections and a.section_hash(sections) != b.section_hash(sections)
