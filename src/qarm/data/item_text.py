"""A generic item-text side file (``data.item_text_file``) joined onto the items by item id.

Any CSV or Parquet with an id column (``data.item_text_id_column``) and one or more text columns
(``data.item_text_columns``), e.g. MovieLens-1M-subset's ``plots.csv`` (``movie_id``,
``description``). Each text column becomes a labelled segment of the item's ``text`` (the string
the text tower reads: ``"Heat (1995). Genres: Action. Description: ..."``) and the first one
fills the item's ``description`` where that is empty; for tables without a ``text`` column the
segments are appended to ``description``, from which the text is composed. Items without a side row keep their text;
side rows whose id is not a catalogue item are counted (``skipped.item_text_unmatched``), never an
error; a bad or duplicate id, or a missing column, is a DataError naming file, row and column.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from qarm.data.files import read_table, resolve_file
from qarm.data.items import compose_text
from qarm.data.schema import clean_text
from qarm.errors import ConfigError, DataError


def read_item_text(path: str | Path, id_column: str, text_columns: list[str]) -> pd.DataFrame:
    """The side file as a frame indexed by int64 item id, one cleaned string column per text column.

    Rows are 1-based record numbers in errors (the CSV header is not a record)."""
    if not text_columns:
        raise ConfigError("data.item_text_columns: name at least one text column of data.item_text_file")
    path = Path(path)
    df = read_table(path, "item text")
    missing = [c for c in [id_column, *text_columns] if c not in df.columns]
    if missing:
        raise DataError(f"item text file has no column {missing[0]!r} (set data.item_text_id_column / "
                        f"data.item_text_columns); columns present: {', '.join(map(str, df.columns))}",
                        file=str(path), column=missing[0])
    raw_ids = df[id_column]
    ids = pd.to_numeric(raw_ids, errors="coerce")
    bad = np.flatnonzero(ids.isna().to_numpy() | (ids.to_numpy() != np.round(ids.to_numpy())))
    if bad.size:
        raise DataError(f"expected an integer item id, got {raw_ids.iloc[bad[0]]!r} ({bad.size} such rows)",
                        file=str(path), row=int(bad[0]) + 1, column=id_column)
    ids = ids.astype(np.int64)
    dup = np.flatnonzero(ids.duplicated().to_numpy())
    if dup.size:
        first = int(np.flatnonzero((ids == ids.iloc[dup[0]]).to_numpy())[0])
        raise DataError(f"duplicate item id {int(ids.iloc[dup[0]])} (first at row {first + 1}; {dup.size} "
                        f"duplicate rows): one text row per item", file=str(path), row=int(dup[0]) + 1,
                        column=id_column)
    out = pd.DataFrame({c: clean_text(df[c], len(df)).to_numpy() for c in text_columns}, index=ids.to_numpy())
    out.index.name = "item_id"
    return out


def join_item_text(items: pd.DataFrame, path: str | Path, id_column: str, text_columns: list[str],
                   skipped: Counter) -> tuple[pd.DataFrame, dict]:
    """Items frame (raw, before validation: ``item_id`` may still be strings) with the side text joined.

    Returns (items, info): info has the file and the counts ``n_rows``, ``n_matched_items``,
    ``n_unmatched_rows`` (also added to ``skipped["item_text_unmatched"]``)."""
    side = read_item_text(path, id_column, text_columns)
    item_ids = pd.to_numeric(items["item_id"], errors="coerce")
    known = set(item_ids.dropna().astype(np.int64).tolist())
    unmatched = int((~side.index.isin(list(known))).sum())
    skipped["item_text_unmatched"] += unmatched
    items = items.copy()
    n = len(items)
    segments = []
    for c in text_columns:
        values = pd.Series(item_ids.map(side[c]).fillna("").astype(str).to_numpy(), index=items.index)
        segments.append((c.replace("_", " ").capitalize(), values))
    matched = int(pd.concat([s != "" for _, s in segments], axis=1).any(axis=1).sum())
    if "text" in items.columns:  # a loader composed the text already (MovieLens): append the segments
        base = clean_text(items["text"], n)
        items["text"] = compose_text([("", base), *segments]).to_numpy()
    desc = clean_text(items["description"] if "description" in items.columns else None, n)
    if "text" in items.columns:
        items["description"] = desc.where(desc != "", segments[0][1]).to_numpy()
    else:  # build_items composes the text from the description (among the schema's text fields)
        parts = [("", desc)] + [("" if i == 0 else label, s) for i, (label, s) in enumerate(segments)]
        items["description"] = compose_text(parts).to_numpy()
    info = {"file": str(Path(path).resolve()), "id_column": id_column, "text_columns": list(text_columns),
            "n_rows": int(len(side)), "n_matched_items": matched, "n_unmatched_rows": unmatched}
    return items, info


def apply_item_text(items: pd.DataFrame, cfg, skipped: Counter, source: dict) -> pd.DataFrame:
    """``join_item_text`` for a DataConfig when ``cfg.item_text_file`` is set (else ``items`` unchanged);
    the side file's figures go into ``source["item_text"]``."""
    if not getattr(cfg, "item_text_file", ""):
        return items
    path = resolve_file(cfg.item_text_file, cfg.path)  # relative names: inside data.path, like data.items_file
    items, info = join_item_text(items, path, cfg.item_text_id_column, list(cfg.item_text_columns), skipped)
    source["item_text"] = info
    return items
