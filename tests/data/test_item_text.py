"""data.item_text_file: a generic CSV/Parquet of item text joined on item id (issue 12 item 5)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from qarm.config import load_config
from qarm.data.item_text import apply_item_text, join_item_text
from qarm.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
ML1M = ROOT.parent / "shared" / "data" / "movielens-1m-subset"


def _items():
    return pd.DataFrame({"item_id": ["1", "2", "3"], "title": ["Heat (1995)", "Up (2009)", "Big (1988)"],
                         "text": ["Heat (1995). Genres: Action", "Up (2009). Genres: Animation", "Big (1988)"]})


def test_join_appends_labelled_segments_and_counts_unmatched(tmp_path):
    side = tmp_path / "plots.csv"
    side.write_text('movie_id,description,mood\n2,"A house flies away.",sweet\n9,"Not in the catalogue.",x\n'
                    '1,"Cops and robbers.",\n')
    skipped: Counter = Counter()
    out, info = join_item_text(_items(), side, "movie_id", ["description", "mood"], skipped)
    assert out["text"].tolist() == ["Heat (1995). Genres: Action. Description: Cops and robbers.",
                                    "Up (2009). Genres: Animation. Description: A house flies away. Mood: sweet",
                                    "Big (1988)"]
    assert out["description"].tolist() == ["Cops and robbers.", "A house flies away.", ""]
    assert skipped["item_text_unmatched"] == 1
    assert info["n_rows"] == 3 and info["n_matched_items"] == 2 and info["n_unmatched_rows"] == 1


def test_join_without_text_column_goes_into_description(tmp_path):
    side = tmp_path / "t.parquet"
    pd.DataFrame({"item_id": [3], "blurb": ["A boy wakes up grown."]}).to_parquet(side)
    items = _items().drop(columns="text")
    out, _ = join_item_text(items, side, "item_id", ["blurb"], Counter())
    assert out["description"].tolist() == ["", "", "A boy wakes up grown."]


@pytest.mark.parametrize("body,match", [
    ("movie_id,description\n1,a\nx2,b\n", r"row 2, column 'movie_id': expected an integer item id, got 'x2'"),
    ("movie_id,description\n1,a\n2,b\n1,c\n", r"row 3, column 'movie_id': duplicate item id 1 \(first at row 1"),
    ("id,description\n1,a\n", r"column 'movie_id': item text file has no column 'movie_id'"),
])
def test_bad_side_file_errors_name_file_row_column(tmp_path, body, match):
    side = tmp_path / "plots.csv"
    side.write_text(body)
    with pytest.raises(DataError, match=match) as err:
        join_item_text(_items(), side, "movie_id", ["description"], Counter())
    assert str(side) in str(err.value)


def test_movielens_1m_subset_plots_join():
    if not (ML1M / "plots.csv").exists():
        pytest.fail(f"movielens-1m-subset not found at {ML1M}")
    from qarm.data.movielens import load_movielens

    cfg = load_config(ROOT / "configs" / "movielens-1m-subset.yaml", [f"data.path={ML1M}"])
    raw = load_movielens(cfg.data.path, read_events=False)
    source: dict = {}
    skipped: Counter = Counter()
    items = apply_item_text(raw.items, cfg.data, skipped, source)
    info = source["item_text"]
    assert len(items) == 3883 and info["n_rows"] == 3301 and info["n_matched_items"] == 3301
    assert skipped["item_text_unmatched"] == 0
    jumanji = items.loc[items["item_id"].astype(int) == 2, "text"].item()
    assert jumanji.startswith("Jumanji (1995). Genres: Adventure, Children's, Fantasy. Description: Jumanji is a 1995")
