"""The pairs stage's view of the data: validated positive events as catalogue row indices.

Only ``split == "train"`` positives feed pair mining and the U2I model; ``valid`` positives feed
its evaluation only. Bad input is a ``DataError`` naming file, row and column; input that is
merely useless (duplicate events, users with one positive, items never positive) is counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from qarm.errors import DataError
from qarm.lookup import IdIndex

EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "split")


@dataclass
class Positives:
    """Positive events of one split. user: raw ids int64 [n]; item: catalogue rows int64 [n]; time int64 [n]."""

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)


def catalogue_rows(items: pd.DataFrame, item_ids: np.ndarray, file: str, row_offset: np.ndarray | None = None
                   ) -> np.ndarray:
    """Row of each item id in items.parquet (sorted by item_id). Unknown ids are a DataError."""
    index = IdIndex(items["item_id"].to_numpy(dtype=np.int64), assume_sorted=True)
    pos, found = index.find(item_ids)
    bad = np.flatnonzero(~found)
    if len(bad):
        row = int(bad[0] if row_offset is None else row_offset[bad[0]])
        raise DataError(f"item_id {int(item_ids[bad[0]])} is not in items.parquet "
                        f"({len(bad)} such events); every event's item must be in the catalogue",
                        file=file, row=row, column="item_id")
    return pos


def read_events(path: str | Path, label: str) -> pd.DataFrame:
    """The columns of events.parquet the pairs stage reads (``EVENT_COLUMNS`` + ``label``), nothing else;
    ``split`` stays dictionary-encoded (a categorical), not one Python string per row.
    A missing column is a DataError naming the file and the columns it has."""
    import pyarrow.parquet as pq

    names = pq.ParquetDataset(path).schema.names  # one file, or a folder of part files (engine=spark)
    for col in (*EVENT_COLUMNS, label):
        if col not in names:
            hint = " (set pairs.label to one of the label columns)" if col == label else ""
            raise DataError(f"missing column{hint}; has {', '.join(names)}", file=str(path), column=col)
    table = pq.read_table(path, columns=list(dict.fromkeys((*EVENT_COLUMNS, label))), read_dictionary=["split"])
    return table.to_pandas()


def validate(items: pd.DataFrame, events: pd.DataFrame, label: str, items_file: str, events_file: str) -> None:
    """Columns present, ids non-null, items sorted and unique, label 0/1."""
    if "item_id" not in items.columns:
        raise DataError(f"missing column; has {', '.join(map(str, items.columns))}", file=items_file, column="item_id")
    ids = items["item_id"]
    if ids.isna().any():
        raise DataError("null item id", file=items_file, row=int(np.flatnonzero(ids.isna().to_numpy())[0]),
                        column="item_id")
    ids = ids.to_numpy(dtype=np.int64)
    if len(ids) > 1 and not (np.diff(ids) > 0).all():
        row = int(np.flatnonzero(np.diff(ids) <= 0)[0]) + 1
        raise DataError("items must be sorted by item_id with no repeats", file=items_file, row=row, column="item_id")
    for col in (*EVENT_COLUMNS, label):
        if col not in events.columns:
            hint = " (set pairs.label to one of the label columns)" if col == label else ""
            raise DataError(f"missing column{hint}; has {', '.join(map(str, events.columns))}",
                            file=events_file, column=col)
    for col in ("user_id", "item_id", "timestamp", label):
        null = events[col].isna().to_numpy()
        if null.any():
            raise DataError(f"null value ({int(null.sum())} rows)", file=events_file, row=int(np.flatnonzero(null)[0]),
                            column=col)
    lab = events[label].to_numpy()
    bad = np.flatnonzero((lab != 0) & (lab != 1))
    if len(bad):
        raise DataError(f"label must be 0 or 1, got {lab[bad[0]]!r}", file=events_file, row=int(bad[0]), column=label)


def load_positives(items: pd.DataFrame, events: pd.DataFrame, label: str, split: str, items_file: str,
                   events_file: str) -> Positives:
    """Positive events of ``split``, exact duplicates (user, item, timestamp) dropped and counted."""
    validate(items, events, label, items_file, events_file)
    mask = (events["split"] == split).to_numpy(dtype=bool) & (events[label].to_numpy() == 1)
    rows = np.flatnonzero(mask)
    user = events["user_id"].to_numpy(dtype=np.int64)[rows]
    item_id = events["item_id"].to_numpy(dtype=np.int64)[rows]
    time = events["timestamp"].to_numpy(dtype=np.int64)[rows]
    item = catalogue_rows(items, item_id, events_file, rows)
    order = np.lexsort((time, item, user))
    dup = np.zeros(len(rows), dtype=bool)
    if len(rows) > 1:
        s = order
        dup[s[1:]] = (user[s[1:]] == user[s[:-1]]) & (item[s[1:]] == item[s[:-1]]) & (time[s[1:]] == time[s[:-1]])
    keep = ~dup
    user, item, time = user[keep], item[keep], time[keep]
    per_user = np.unique(user, return_counts=True)[1]
    counts = {
        "n_positives": int(len(user)),
        "n_duplicate_events": int(dup.sum()),
        "n_users": int(len(per_user)),
        "n_users_single_event": int((per_user == 1).sum()),
        "n_items_never_positive": int((np.bincount(item, minlength=len(items)) == 0).sum()),
    }
    return Positives(user, item, time, counts)
