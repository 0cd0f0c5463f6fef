"""Fixture builders for the data tests: tiny MovieLens copies in every layout, and schema files.

Everything is written by the tests themselves (the MovieLens licence forbids copying the real
files into the repository).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from data_fixtures import N_ITEMS, N_USERS, TS0, ratings_table, write_imdb, write_posters


@pytest.fixture
def make_ml100k(tmp_path):
    """``make_ml100k(posters=True, imdb=True)`` -> root folder with ml-100k/, posters/, imdb_details.csv."""

    def make(posters: bool = True, imdb: bool = True) -> Path:
        root = tmp_path / "ml100k-root"
        d = root / "ml-100k"
        d.mkdir(parents=True)
        r = ratings_table()
        r[["user_id", "item_id", "rating", "timestamp"]].to_csv(d / "u.data", sep="\t", header=False, index=False)
        lines = []
        for i in range(1, N_ITEMS + 1):
            flags = ["0"] * 19
            flags[1 + i % 18] = "1"
            flags[(5 * i) % 19] = "1"
            title = "Amélie (2001)" if i == 3 else f"Film {i} (1995)"
            lines.append("|".join([str(i), title, "01-Jan-1995", "", f"http://imdb/{i}", *flags]))
        (d / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
        (d / "u.user").write_text("".join(f"{u}|30|M|other|00000\n" for u in range(1, N_USERS + 1)))
        if posters:
            write_posters(root / "posters", [i for i in range(1, N_ITEMS + 1) if i != 2], corrupt=5)
        if imdb:
            write_imdb(root / "imdb_details.csv", list(range(1, N_ITEMS)))
        return root

    return make


@pytest.fixture
def make_ml1m(tmp_path):
    """ml-1m layout: ``::``-separated .dat files (latin-1 as ml-1m; UTF-8 as ml-10m), nested one folder down."""

    def make(encoding: str = "latin-1") -> Path:
        root = tmp_path / "download"
        d = root / "ml-1m"
        d.mkdir(parents=True)
        r = ratings_table(1)
        (d / "ratings.dat").write_text("".join(f"{a}::{b}::{c}::{t}\n" for a, b, c, t in
                                               r[["user_id", "item_id", "rating", "timestamp"]].itertuples(index=False)))
        movies = "".join(f"{i}::{'Café Society' if i == 4 else f'Film {i}'} (1999)::Comedy|Drama\n"
                         for i in range(1, N_ITEMS + 1))
        (d / "movies.dat").write_bytes(movies.encode(encoding))
        (d / "users.dat").write_text("".join(f"{u}::M::25::0::00000\n" for u in range(1, N_USERS + 1)))
        return root

    return make


@pytest.fixture
def make_csv_layout(tmp_path):
    """ml-latest(-small)/ml-20m/25m/32m CSV layout with tags.csv and links.csv."""

    def make(name: str = "ml-latest-small") -> Path:
        d = tmp_path / name
        d.mkdir(parents=True)
        r = ratings_table(2).rename(columns={"user_id": "userId", "item_id": "movieId"})
        r["rating"] = r["rating"] - 0.5  # half stars, as in the CSV layouts
        r[["userId", "movieId", "rating", "timestamp"]].to_csv(d / "ratings.csv", index=False)
        movies = pd.DataFrame({"movieId": range(1, N_ITEMS + 1),
                               "title": [f'"Quoted, Film" {i} (2005)' for i in range(1, N_ITEMS + 1)],
                               "genres": ["(no genres listed)" if i == 1 else "Action|Sci-Fi"
                                          for i in range(1, N_ITEMS + 1)]})
        movies.to_csv(d / "movies.csv", index=False)
        tags = pd.DataFrame({"userId": [1, 2, 3, 1, 2], "movieId": [2, 2, 2, 3, 99],
                             "tag": ["Space", "space ", "robots", "funny", "orphan"],
                             "timestamp": [TS0] * 5})
        tags.to_csv(d / "tags.csv", index=False)
        pd.DataFrame({"movieId": range(1, N_ITEMS + 1), "imdbId": range(100, 100 + N_ITEMS),
                      "tmdbId": range(1, N_ITEMS + 1)}).to_csv(d / "links.csv", index=False)
        return d

    return make


@pytest.fixture
def schema_files(tmp_path):
    """``schema_files(items=None, events=None, fmt="csv")`` writes items/events in the qarm schema.

    Returns (folder, items DataFrame, events DataFrame); pass modified frames to write bad input.
    """
    from PIL import Image

    folder = tmp_path / "files"
    (folder / "img").mkdir(parents=True)
    for i in (1, 2, 3):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(folder / "img" / f"{i}.png")
    (folder / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")

    def write(items: pd.DataFrame | None = None, events: pd.DataFrame | None = None, fmt: str = "csv"):
        if items is None:
            items = pd.DataFrame({"item_id": [1, 2, 3, 4], "title": ["red", "green", "blue", "cyan"],
                                  "description": ["a", "b", "c", "d"], "tags": ["x", "y", "z", "w"],
                                  "category": ["c1", "c1", "c2", "c2"],
                                  "image": ["img/1.png", "img/2.png", "img/3.png", "img/4.png"]})
        if events is None:
            events = pd.DataFrame({"user_id": [1, 1, 2, 2, 3, 3, 4, 4, 5, 5],
                                   "item_id": [1, 2, 3, 4, 1, 2, 3, 4, 1, 3],
                                   "timestamp": [TS0 + 10 * k for k in range(10)],
                                   "click": [1, 0, 1, 1, 0, 1, 0, 1, 1, 0],
                                   "like": [0, 0, 1, 0, 0, 1, 0, 0, 1, 0],
                                   "dwell": [3.5] * 10})
        for name, df in (("items", items), ("events", events)):
            if fmt == "csv":
                df.to_csv(folder / f"{name}.csv", index=False)
            else:
                df.to_parquet(folder / f"{name}.parquet", index=False)
        return folder, items, events

    return write
