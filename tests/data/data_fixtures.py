"""Constants and small writers shared by the data tests (imported by conftest.py and the tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

N_USERS, N_ITEMS, N_RATINGS = 6, 8, 48
TS0 = 880_000_000
LEAKY_IMDB_RATING = "9.87"      # must never reach any item column
LEAKY_IMDB_REVIEWS = "7777K"


def ratings_table(seed: int = 0) -> pd.DataFrame:
    """N_RATINGS distinct (user, item) ratings over a month, every item rated at least once."""
    rng = np.random.default_rng(seed)
    pairs = rng.choice(N_USERS * N_ITEMS, size=N_RATINGS, replace=False)
    users, items = pairs // N_ITEMS + 1, pairs % N_ITEMS + 1
    items[:N_ITEMS] = np.arange(1, N_ITEMS + 1)  # every item seen
    df = pd.DataFrame({"user_id": users, "item_id": items}).drop_duplicates().reset_index(drop=True)
    df["rating"] = rng.integers(1, 6, size=len(df))
    df["timestamp"] = TS0 + np.sort(rng.integers(0, 30 * 86_400, size=len(df)))
    return df


def write_posters(folder: Path, ids: list[int], corrupt: int | None = None) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        if i == corrupt:
            (folder / f"{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        else:
            Image.new("RGB", (12, 18), (10 * i, 40, 200)).save(folder / f"{i}.jpg", format="JPEG")


def write_imdb(path: Path, ids: list[int]) -> None:
    rows = [{"movie_genres": "[1]", "movie_id": i, "movie_title": f"Movie {i}", "description": f"Plot of movie {i}.",
             "rating": LEAKY_IMDB_RATING, "num_review": LEAKY_IMDB_REVIEWS, "director": f"['Director {i}']",
             "writer": "['W']", "cast": "['Ann A', \"Bob O'Neil\", 'Cy C', 'Di D', 'Ed E', 'Flo F']",
             "genre": "['Drama']"} for i in ids]
    pd.DataFrame(rows).to_csv(path, index=False)
