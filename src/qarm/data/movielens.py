"""MovieLens loaders for every official layout, plus the optional posters and IMDb details.

Layouts (detected from the files present, in ``path`` or one folder below it):

- ``ml-100k``: ``u.data`` (tab: user, item, rating, ts), ``u.item`` (``|``, latin-1, 19 genre
  flags), ``u.user``;
- ``ml-1m`` (and ml-10m): ``ratings.dat``, ``movies.dat`` (``::``, latin-1, genres ``A|B``), ``users.dat``;
- CSV (ml-latest, ml-latest-small, ml-20m, ml-25m, ml-32m): ``ratings.csv``, ``movies.csv``,
  ``tags.csv`` (aggregated into item ``tags``), ``links.csv``.

Optional extras beside the layout folder (or inside it): ``posters/<item_id>.jpg`` and
``imdb_details.csv`` keyed by ``movie_id`` (plot -> ``description``; director and cast go into
``text``). IMDb ``rating`` and ``num_review`` are never read: they leak the label.
Labels: ``click`` = rating >= ``click_min_rating``, ``like`` = rating >= ``like_min_rating``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from qarm.data.items import compose_text
from qarm.data.schema import clean_text, require_columns
from qarm.errors import DataError

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western"]
IMDB_COLUMNS = ["movie_id", "description", "director", "cast"]  # never rating / num_review
IMDB_CAST_NAMES = 5  # first billed names in the text: enough to characterise, short enough for the encoder
IMDB_NO_PLOT = "It looks like we don't have any Plot Summaries"
TAGS_PER_ITEM = 20   # most frequent user tags per movie


@dataclass
class RawMovieLens:
    """Raw tables of one MovieLens copy, before validation."""

    layout: str
    root: Path
    items: pd.DataFrame     # item_id, title, category, description, tags, text, image
    events: pd.DataFrame | None  # user_id, item_id, timestamp, rating (strings allowed); None: not read
    items_file: str
    events_file: str
    extras: dict[str, str] = field(default_factory=dict)


def detect_layout(path: Path) -> tuple[str, Path]:
    """(layout name, folder holding the layout files) for a MovieLens copy at ``path``."""
    if not path.exists():
        raise DataError(f"MovieLens folder not found (relative paths are read from the current directory "
                        f"{Path.cwd()}); set data.path", file=str(path))
    candidates = [path] + sorted(p for p in path.iterdir() if p.is_dir())
    for folder in candidates:
        if (folder / "u.data").exists():
            return "ml-100k", folder
        if (folder / "ratings.dat").exists():
            return "ml-1m", folder
        if (folder / "ratings.csv").exists():
            return "csv", folder
    raise DataError("no MovieLens layout found: expected u.data (ml-100k), ratings.dat (ml-1m) or ratings.csv "
                    "(ml-latest/-small, ml-20m, ml-25m, ml-32m) here or one folder below", file=str(path))


def _read(path: Path, what: str, **kw) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{what} file is missing", file=str(path))
    try:
        return pd.read_csv(path, **kw)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {what}: {exc}", file=str(path)) from None


def _read_double_colon(path: Path, names: list[str], what: str, text: bool) -> pd.DataFrame:
    """``::``-separated ``.dat``: swap the separator for a tab so the fast C parser reads it.

    ml-1m is latin-1, ml-10m UTF-8: UTF-8 when the bytes decode as such, else latin-1.
    ``text``: read every column as a string (movies); else let pandas infer numbers (ratings).
    """
    if not path.exists():
        raise DataError(f"{what} file is missing", file=str(path))
    data = path.read_bytes().replace(b"::", b"\t")
    try:
        data.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        encoding = "latin-1"
    try:
        return pd.read_csv(io.BytesIO(data), sep="\t", header=None, names=names, encoding=encoding, quoting=3,
                           dtype=str if text else None, keep_default_na=not text)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot parse {what}: {exc}", file=str(path)) from None


def load_ml100k(folder: Path, read_events: bool = True) -> tuple[pd.DataFrame, pd.DataFrame | None, str, str]:
    ratings_file, items_file = folder / "u.data", folder / "u.item"
    events = _read(ratings_file, "ratings", sep="\t", header=None,
                   names=["user_id", "item_id", "rating", "timestamp"]) if read_events else None
    items = _read(items_file, "items", sep="|", header=None, encoding="latin-1", quoting=3,
                  names=["item_id", "title", "release_date", "video_release_date", "imdb_url", *ML100K_GENRES],
                  dtype={g: "Int8" for g in ML100K_GENRES})
    flags = items[ML100K_GENRES].fillna(0).to_numpy(dtype=np.int8)
    category = _join_flags(flags, np.array(ML100K_GENRES, dtype=object), items.index)
    out = pd.DataFrame({"item_id": items["item_id"], "title": items["title"], "category": category})
    return out, events, str(items_file), str(ratings_file)


def _join_flags(flags: np.ndarray, names: np.ndarray, index: pd.Index) -> pd.Series:
    """', '.join of the names whose flag is set, per row, built column by column (no row loop)."""
    out = pd.Series([""] * len(index), index=index, dtype=object)
    for j, name in enumerate(names):
        on = flags[:, j].astype(bool)
        sep = np.where(out.to_numpy() != "", ", ", "")
        out = out.where(~on, out + pd.Series(sep, index=index) + name)
    return out


def load_ml1m(folder: Path, read_events: bool = True) -> tuple[pd.DataFrame, pd.DataFrame | None, str, str]:
    ratings_file, items_file = folder / "ratings.dat", folder / "movies.dat"
    events = _read_double_colon(ratings_file, ["user_id", "item_id", "rating", "timestamp"], "ratings",
                                text=False) if read_events else None
    items = _read_double_colon(items_file, ["item_id", "title", "genres"], "movies", text=True)
    out = pd.DataFrame({"item_id": items["item_id"], "title": items["title"], "category": _genres(items["genres"])})
    return out, events, str(items_file), str(ratings_file)


def _genres(s: pd.Series) -> pd.Series:
    g = s.astype("string").fillna("").str.replace("(no genres listed)", "", regex=False)
    return g.str.replace("|", ", ", regex=False).astype(object)


def load_csv_layout(folder: Path, read_events: bool = True) -> tuple[pd.DataFrame, pd.DataFrame | None, str, str]:
    ratings_file, items_file = folder / "ratings.csv", folder / "movies.csv"
    events = None
    if read_events:
        events = _read(ratings_file, "ratings", engine="c")
        require_columns(events, ["userId", "movieId", "rating", "timestamp"], str(ratings_file), "ratings.csv")
        events = events.rename(columns={"userId": "user_id", "movieId": "item_id"})
    items = _read(items_file, "movies", dtype=str, keep_default_na=False)
    require_columns(items, ["movieId", "title", "genres"], str(items_file), "movies.csv")
    out = pd.DataFrame({"item_id": items["movieId"], "title": items["title"], "category": _genres(items["genres"])})
    tags_file = folder / "tags.csv"
    if tags_file.exists():
        out["tags"] = _aggregate_tags(tags_file, out["item_id"])
    return out, events, str(items_file), str(ratings_file)


def _aggregate_tags(tags_file: Path, item_ids: pd.Series) -> pd.Series:
    """Per movie: its distinct user tags (lower-cased), most frequent first, joined with ', '."""
    tags = _read(tags_file, "tags", dtype=str, keep_default_na=False)
    require_columns(tags, ["movieId", "tag"], str(tags_file), "tags.csv")
    t = pd.DataFrame({"item_id": tags["movieId"].str.strip(), "tag": tags["tag"].str.strip().str.lower()})
    t = t[t["tag"] != ""]
    counts = t.groupby(["item_id", "tag"], sort=False).size().rename("n").reset_index()
    counts = counts.sort_values(["item_id", "n", "tag"], ascending=[True, False, True], kind="stable")
    counts = counts.groupby("item_id", sort=False).head(TAGS_PER_ITEM)
    joined = counts.groupby("item_id", sort=False)["tag"].agg(", ".join)
    return item_ids.astype(str).str.strip().map(joined).fillna("").astype(object)


def _list_literal(s: pd.Series) -> pd.Series:
    """``"['A', "B's"]"`` -> ``"A, B's"``, vectorised (IMDb list fields are Python-literal strings)."""
    s = s.astype("string").fillna("").str.strip()
    body = s.str.replace(r"^\[|\]$", "", regex=True)
    body = body.str.replace(r"""['"]\s*,\s*['"]""", "\x1f", regex=True).str.strip("'\"")
    body = body.str.replace("\x1f", ", ", regex=False)
    # The scrape wrote missing lists as "['nan']"; drop such entries.
    body = body.str.replace(r"(^|, )nan(?=, |$)", "", regex=True).str.strip(", ")
    return body.astype(object)


def load_imdb_details(path: Path) -> pd.DataFrame:
    """movie_id -> description, director, cast (first names); IMDb rating/num_review are not read."""
    df = _read(path, "IMDb details", usecols=lambda c: c in IMDB_COLUMNS, dtype=str, keep_default_na=False)
    require_columns(df, ["movie_id"], str(path), "IMDb details")
    for col in IMDB_COLUMNS[1:]:
        if col not in df.columns:
            df[col] = ""
    ids = pd.to_numeric(df["movie_id"], errors="coerce")
    df = df[ids.notna()].assign(movie_id=ids[ids.notna()].astype(np.int64))
    df = df.drop_duplicates("movie_id", keep="first")
    # IMDb's "no plot yet" placeholder is not a description of the film.
    description = clean_text(df["description"], len(df))
    description = description.where(~description.str.startswith(IMDB_NO_PLOT), "")
    cast = _list_literal(df["cast"]).str.split(", ").str[:IMDB_CAST_NAMES].str.join(", ")
    return pd.DataFrame({"item_id": df["movie_id"].to_numpy(),
                         "description": description.to_numpy(),
                         "director": _list_literal(df["director"]).to_numpy(),
                         "cast": cast.fillna("").to_numpy()})


def _find_extra(root: Path, folder: Path, name: str) -> Path | None:
    for base in (folder, root):
        if (base / name).exists():
            return base / name
    return None


def load_movielens(path: str | Path, read_events: bool = True) -> RawMovieLens:
    """Read a MovieLens copy in any official layout, with posters / IMDb details when present.

    ``read_events=False`` leaves ``events`` None (engine=spark reads the ratings file itself).
    """
    root = Path(path).resolve()
    layout, folder = detect_layout(root)
    loader = {"ml-100k": load_ml100k, "ml-1m": load_ml1m, "csv": load_csv_layout}[layout]
    items, events, items_file, events_file = loader(folder, read_events)
    n = len(items)
    items = items.reset_index(drop=True)
    for col in ("title", "category", "tags", "description"):
        items[col] = clean_text(items[col] if col in items.columns else None, n).to_numpy()
    ids = pd.to_numeric(items["item_id"], errors="coerce")
    extras: dict[str, str] = {}
    director = cast = pd.Series([""] * n, dtype=object)
    imdb_file = _find_extra(root, folder, "imdb_details.csv")
    if imdb_file is not None:
        extras["imdb_details"] = str(imdb_file)
        imdb = load_imdb_details(imdb_file).set_index("item_id")
        items["description"] = ids.map(imdb["description"]).fillna("").astype(object).to_numpy()
        director = ids.map(imdb["director"]).fillna("").astype(object)
        cast = ids.map(imdb["cast"]).fillna("").astype(object)
    items["text"] = compose_text([("", items["title"]), ("Genres", items["category"]),
                                  ("Plot", items["description"]), ("Director", director), ("Cast", cast),
                                  ("Tags", items["tags"])]).to_numpy()
    posters = _find_extra(root, folder, "posters")
    if posters is not None and posters.is_dir():
        extras["posters"] = str(posters)
        stem = str(posters.resolve()) + "/" + items["item_id"].astype(str).str.strip()
        # Prefer .jpg (the documented name); fall back to another image suffix only when present.
        present = {p.name for p in posters.iterdir()}
        image = stem + ".jpg"
        for suffix in (".jpeg", ".png"):
            alt = items["item_id"].astype(str).str.strip() + suffix
            use = ~(items["item_id"].astype(str).str.strip() + ".jpg").isin(present) & alt.isin(present)
            image = image.where(~use, stem + suffix)
        items["image"] = image.to_numpy()
    return RawMovieLens(layout, folder, items, events, items_file, events_file, extras)


def movielens_labels(events: pd.DataFrame, label_columns: list[str], click_min: float, like_min: float,
                     file: str) -> pd.DataFrame:
    """Add ``click``/``like`` from ``rating`` (rows with unparsable ratings get labels 0: they are dropped
    later by validation, which counts them)."""
    thresholds = {"click": click_min, "like": like_min}
    unknown = [c for c in label_columns if c not in thresholds]
    if unknown:
        raise DataError(f"MovieLens derives only the labels click and like from ratings, not {unknown[0]!r}; "
                        f"set data.label_columns to a subset of [click, like]", file=file, column=unknown[0])
    rating = pd.to_numeric(events["rating"], errors="coerce")
    return events.assign(**{c: (rating >= thresholds[c]).astype(np.int8) for c in label_columns})
