"""The report's building blocks: metric lookup, collision statistics, projections, HTML helpers."""

from __future__ import annotations

import numpy as np
import pytest

from qarm.errors import QarmError
from qarm.report import html as H
from qarm.report.codes import collision_stats, list_column
from qarm.report.context import flatten, lookup, mean_std
from qarm.report.projection import colour_labels, pca_2d, project_2d, subsample


def test_lookup_reads_flat_and_nested_dotted_keys():
    nested = {"raw": {"recall@10": 0.1}, "variants": {"qarm": {"click": {"auc": {"mean": 0.7, "std": 0.01}}}}}
    flat = {"raw.recall@10": 0.1, "variants": {"qarm": {"click.auc": {"mean": 0.7, "std": 0.01}}}}
    for tree in (nested, flat):
        assert lookup(tree, "raw.recall@10") == 0.1
        assert mean_std(lookup(tree, "variants.qarm.click.auc")) == (0.7, 0.01)
        assert lookup(tree, "raw.recall@50") is None and lookup(tree, "variants.id.click.auc") is None
    assert flatten(nested) == [("raw.recall@10", 0.1), ("variants.qarm.click.auc.mean", 0.7),
                               ("variants.qarm.click.auc.std", 0.01)]
    assert mean_std(0.5) == (0.5, None) and mean_std(True) == (None, None) and mean_std("x") == (None, None)


def test_collision_stats_by_prefix_depth():
    rq = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0], [1, 1, 1]])
    d1, d2, d3 = collision_stats(rq)
    assert (d1["distinct"], d1["collision_rate"], d1["max_items"]) == (2, 0.75, 3)
    assert (d2["distinct"], d2["collision_rate"], d2["max_items"]) == (3, 0.5, 2)
    assert (d3["distinct"], d3["unique_sid_ratio"], d3["collision_rate"], d3["mean_items"]) == (3, 0.75, 0.5, 4 / 3)


def test_list_column_reads_fixed_length_code_lists(tmp_path):
    import pandas as pd

    from qarm.io import write_parquet

    codes = pd.DataFrame({"item_id": [1, 2], "rq": [np.array([3, 4, 5], np.int32), np.array([6, 7, 8], np.int32)]})
    write_parquet(tmp_path / "codes.parquet", codes)
    got = list_column(tmp_path / "codes.parquet", "rq")
    assert got.dtype == np.int64 and got.tolist() == [[3, 4, 5], [6, 7, 8]]


def test_projection_is_deterministic_and_keeps_structure():
    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 0, 0, 0], [-5.0, 0, 0, 0]])
    labels = rng.integers(0, 2, size=200)
    emb = (centres[labels] + rng.standard_normal((200, 4))).astype(np.float32)
    xy = pca_2d(emb)
    assert xy.shape == (200, 2) and xy.dtype == np.float32
    assert np.array_equal(xy, project_2d(emb, "pca"))
    # the first component separates the two clusters
    assert np.sign(xy[labels == 0, 0].mean()) != np.sign(xy[labels == 1, 0].mean())
    with pytest.raises(QarmError, match="unknown method 'umap'"):
        project_2d(emb, "umap")
    rows = subsample(1000, 100, seed=3)
    assert len(rows) == 100 and np.all(np.diff(rows) > 0) and np.array_equal(rows, subsample(1000, 100, seed=3))
    assert np.array_equal(subsample(50, 100, seed=3), np.arange(50))


def test_colour_labels_keep_the_most_frequent_classes():
    labels = np.array(["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"] * 1 + ["e"] * 1)
    index, names = colour_labels(labels, max_classes=3)
    assert names == ["a", "b", "other"]
    assert index.tolist() == [0] * 5 + [1] * 4 + [2] * 5


def test_html_helpers_escape_and_format():
    assert H.esc('<a href="x">&') == "&lt;a href=&quot;x&quot;&gt;&amp;"
    assert H.fmt(1234567) == "1,234,567" and H.fmt(150000.0) == "150,000" and H.fmt(0.123456) == "0.1235"
    assert H.fmt(None) == "–" and H.fmt([1, 0.5]) == "[1, 0.5]" and H.fmt(2e-5) == "2.000e-05"
    assert H.fmt_mean_std(0.71234, 0.0042) == "0.7123 ± 0.0042"
    table = H.table(["k", "v"], [("<x>", 3)], numeric=[False, True])
    assert "<td>&lt;x&gt;</td>" in table and '<td class="num">3</td>' in table
