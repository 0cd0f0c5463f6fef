"""MovieLens loaders: every official layout (fixtures built here) and the real ml-100k counts."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from data_fixtures import LEAKY_IMDB_RATING, LEAKY_IMDB_REVIEWS, N_ITEMS, N_USERS, ratings_table

from qarm.config import load_config
from qarm.data.movielens import detect_layout
from qarm.data.stage import prepare
from qarm.errors import ConfigError, DataError


def run_prepare_on(path, tmp_path, *overrides):
    cfg = load_config(None, ["data.source=movielens", f"data.path={path}", *overrides])
    return prepare(cfg, tmp_path / "run-data", show_progress=False)


def test_ml100k_layout_with_posters_and_imdb(make_ml100k, tmp_path):
    root = make_ml100k()
    p = run_prepare_on(root, tmp_path)
    items, events = p.items, p.events
    assert p.source["layout"] == "ml-100k"
    assert len(items) == N_ITEMS and items["item_id"].tolist() == list(range(1, N_ITEMS + 1))
    assert len(events) == len(ratings_table()) and events["user_id"].nunique() == N_USERS
    # latin-1 title decoded; genres from the 19 flags; IMDb plot, director and first 5 cast names in the text
    assert items.loc[2, "title"] == "Amélie (2001)"
    assert items.loc[0, "category"] == "Adventure, Comedy"
    assert items.loc[0, "description"] == "Plot of movie 1."
    assert "Director: Director 1" in items.loc[0, "text"]
    assert "Cast: Ann A, Bob O'Neil, Cy C, Di D, Ed E" in items.loc[0, "text"] and "Flo F" not in items.loc[0, "text"]
    assert items.loc[7, "description"] == "" and items.loc[7, "has_text"]  # no IMDb row: title + genres remain
    # IMDb rating / num_review leak the label: they are in no column of any item
    flat = [str(v) for v in items.to_numpy().ravel()]
    assert not any(LEAKY_IMDB_RATING in v or LEAKY_IMDB_REVIEWS in v for v in flat)
    # poster 2 missing, poster 5 corrupt: both items stay, image null, and both cases are counted
    assert items.loc[items.item_id.isin([2, 5]), "image"].isna().all()
    assert not items.loc[items.item_id.isin([2, 5]), "has_image"].any()
    assert items["has_image"].sum() == N_ITEMS - 2
    assert p.skipped["missing_image"] == 1 and p.skipped["undecodable_image"] == 1
    # labels: click = rating >= 4, like = rating == 5
    r = ratings_table().set_index(["user_id", "item_id"])["rating"]
    got = events.set_index(["user_id", "item_id"])
    assert (got["click"] == (r.loc[got.index] >= 4).astype(np.int8).to_numpy()).all()
    assert (got["like"] == (r.loc[got.index] == 5).astype(np.int8).to_numpy()).all()
    assert events["rating"].dtype == np.float32


def test_ml100k_without_extras(make_ml100k, tmp_path):
    root = make_ml100k(posters=False, imdb=False)
    p = run_prepare_on(root / "ml-100k", tmp_path)  # pointing at the layout folder itself works too
    assert p.items["image"].isna().all() and p.items["description"].eq("").all()
    assert p.skipped["missing_image"] == 0  # no posters folder: no image modality, nothing skipped


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_ml1m_layout_double_colon(make_ml1m, tmp_path, encoding):
    root = make_ml1m(encoding)
    assert detect_layout(root)[0] == "ml-1m"  # found one folder below
    p = run_prepare_on(root, tmp_path)
    assert len(p.items) == N_ITEMS and len(p.events) == len(ratings_table(1))
    assert p.items.loc[3, "title"] == "Café Society (1999)"
    assert p.items.loc[0, "category"] == "Comedy, Drama"
    assert p.events["timestamp"].dtype == np.int64


@pytest.mark.parametrize("name", ["ml-latest-small", "ml-latest", "ml-20m", "ml-25m", "ml-32m"])
def test_csv_layouts_with_tags(make_csv_layout, tmp_path, name):
    d = make_csv_layout(name)
    p = run_prepare_on(d, tmp_path)
    items = p.items.set_index("item_id")
    assert p.source["layout"] == "csv" and len(items) == N_ITEMS
    assert items.loc[1, "title"] == '"Quoted, Film" 1 (2005)'
    assert items.loc[1, "category"] == ""  # "(no genres listed)"
    assert items.loc[2, "tags"] == "space, robots"  # lower-cased, stripped, most frequent first
    assert "Tags: space, robots" in items.loc[2, "text"]
    assert items.loc[3, "tags"] == "funny" and items.loc[4, "tags"] == ""
    # half-star ratings: click = rating >= 4
    r = ratings_table(2)
    assert p.events["click"].sum() == int((r["rating"] - 0.5 >= 4).sum())


def test_missing_layout_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no MovieLens layout found"):
        run_prepare_on(tmp_path / "empty", tmp_path)
    with pytest.raises(DataError, match="not found"):
        run_prepare_on(tmp_path / "nope", tmp_path)
    with pytest.raises(ConfigError, match="data.path"):
        prepare(load_config(None, ["data.source=movielens"]), tmp_path / "d", show_progress=False)


def test_movielens_unknown_label_is_an_error(make_ml100k, tmp_path):
    with pytest.raises(DataError, match="click and like"):
        run_prepare_on(make_ml100k(), tmp_path, "data.label_columns=[click, watched]")


def test_movielens_missing_ratings_column_csv(make_csv_layout, tmp_path):
    d = make_csv_layout()
    (d / "ratings.csv").write_text("userId,movieId,timestamp\n1,1,5\n")
    with pytest.raises(DataError) as err:
        run_prepare_on(d, tmp_path)
    assert "ratings.csv" in str(err.value) and "'rating'" in str(err.value)


@pytest.mark.slow
def test_real_ml100k_counts(pipeline_run, ml100k_path):
    """The issue's must-show: 943 users, 1,682 items, 100,000 events, 1,649 posters, cold items."""
    run = pipeline_run("ml100k-fast", ["prepare"])
    m = json.loads((run / "metrics.json").read_text())["prepare"]
    assert (m["n_users"], m["n_items"], m["n_events"]) == (943, 1682, 100_000)
    assert m["modality_items"]["image"] == 1649 and m["skipped"]["missing_image"] == 33
    assert m["n_cold_items"] > 0 and m["n_events_by_split"]["cold_test"] > 0
    assert sum(m["n_events_by_split"].values()) == 100_000
    items = pq.read_table(run / "items.parquet").to_pandas()
    assert items["item_id"].is_monotonic_increasing and items["has_image"].sum() == 1649
    assert items["description"].ne("").sum() > 1400  # IMDb plots for most items
