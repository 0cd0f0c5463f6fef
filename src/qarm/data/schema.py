"""The items/events schema and its validation (see docs/data.md).

Validation is vectorised (numpy/pandas column operations, no Python loop over rows). Each
problem is either a :class:`~qarm.errors.DataError` naming file, row and column, or, where the
row can be dropped (or a modality marked missing) without harming the rest, a counted skip.
``strict=True`` turns every dropped *row* into an error instead.

Row numbers in messages are 1-based record numbers: the data line for files without a header
(``u.data``), the line after the header for CSV, the row position for Parquet.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from qarm.errors import DataError

ITEM_TEXT_COLUMNS = ("title", "description", "tags", "category")
REQUIRED_ITEM_COLUMNS = ("item_id",)
REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "timestamp")
SPLITS = ("train", "valid", "test", "cold_test", "cold_excluded")

ITEMS_SCHEMA = pa.schema([
    ("item_id", pa.int64()),
    ("title", pa.string()), ("description", pa.string()), ("tags", pa.string()), ("category", pa.string()),
    ("text", pa.string()),
    ("image", pa.string()), ("audio", pa.string()),
    ("has_text", pa.bool_()), ("has_image", pa.bool_()), ("has_audio", pa.bool_()),
    ("holdout", pa.bool_()), ("cold", pa.bool_()),
    ("train_count", pa.int64()), ("freq_bucket", pa.string()),
])


def require_columns(df: pd.DataFrame, columns: Iterable[str], file: str, what: str) -> None:
    """DataError naming the first missing column, and the columns that are there."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{what} needs column(s) {', '.join(missing)}; found: {', '.join(map(str, df.columns))}",
                        file=file, column=missing[0])


def first_row(bad: np.ndarray, index: pd.Index) -> int:
    """1-based record number of the first True in ``bad`` (``index`` holds 0-based record positions)."""
    return int(index[int(np.flatnonzero(bad)[0])]) + 1


class _RowFilter:
    """Accumulates per-row checks over one table; each bad row is counted under its first reason."""

    def __init__(self, df: pd.DataFrame, file: str, skipped: Counter, strict: bool) -> None:
        self.index, self.file, self.skipped, self.strict = df.index, file, skipped, strict
        self.keep = np.ones(len(df), dtype=bool)

    def check(self, bad: np.ndarray, reason: str, message: str, column: str) -> None:
        if not bad.any():  # the common, clean case: one cheap scan
            return
        bad = bad & self.keep
        n_bad = int(np.count_nonzero(bad))
        if n_bad == 0:
            return
        if self.strict:
            raise DataError(f"{message} ({n_bad} such rows; set data.strict=false to skip and count them)",
                            file=self.file, row=first_row(bad, self.index), column=column)
        self.skipped[reason] += n_bad
        self.keep &= ~bad


def _plain_ints(s: pd.Series) -> bool:
    """A numpy integer column: cannot hold missing values, so no NaN scan is needed."""
    return isinstance(s.dtype, np.dtype) and s.dtype.kind in "iu"


def parse_int_ids(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer ids -> (int64 values, bad mask). Bad: missing, not a number, not whole."""
    if _plain_ints(s) or (pd.api.types.is_integer_dtype(s.dtype) and not s.hasnans):
        return s.to_numpy(dtype=np.int64), np.zeros(len(s), dtype=bool)
    parsed = pd.to_numeric(s, errors="coerce")
    if pd.api.types.is_integer_dtype(parsed.dtype) and not parsed.hasnans:  # e.g. all-digit strings: exact
        return parsed.to_numpy(dtype=np.int64), np.zeros(len(s), dtype=bool)
    num = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(num) | (num != np.round(num))
    return np.where(bad, 0, num).astype(np.int64), bad


def parse_timestamps(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps -> (int64 unix seconds, bad mask).

    Accepts integer/float unix seconds, datetime columns, and strings holding either a number or
    an ISO-8601 date-time (naive ones read as UTC).
    """
    if _plain_ints(s) or (pd.api.types.is_integer_dtype(s.dtype) and not s.hasnans):
        return s.to_numpy(dtype=np.int64), np.zeros(len(s), dtype=bool)
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        dt = pd.to_datetime(s, utc=True)
        bad = dt.isna().to_numpy()
        secs = (dt.dt.tz_convert(None) - pd.Timestamp(0)) // pd.Timedelta(seconds=1)
        return secs.fillna(0).to_numpy(dtype=np.int64), bad
    num = np.array(pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan))  # writable
    bad = ~np.isfinite(num)
    if bad.any() and not pd.api.types.is_numeric_dtype(s.dtype):
        rest = np.flatnonzero(bad & s.notna().to_numpy())
        if len(rest):
            dt = pd.to_datetime(s.iloc[rest].astype(str), errors="coerce", utc=True, format="ISO8601")
            ok = dt.notna().to_numpy()
            secs = ((dt[ok].dt.tz_convert(None) - pd.Timestamp(0)) // pd.Timedelta(seconds=1)).to_numpy(np.float64)
            num[rest[ok]] = secs
            bad[rest[ok]] = False
    return np.where(bad, 0, np.floor(np.nan_to_num(num))).astype(np.int64), bad


_LABEL_WORDS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}


def parse_labels(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels -> (int8 values, bad mask). Accepts bools, 0/1 numbers, and '0'/'1'/'true'/'false'."""
    if pd.api.types.is_bool_dtype(s.dtype) and not s.hasnans:
        return s.to_numpy(dtype=np.int8), np.zeros(len(s), dtype=bool)
    if pd.api.types.is_numeric_dtype(s.dtype):
        if _plain_ints(s) or (pd.api.types.is_integer_dtype(s.dtype) and not s.hasnans):
            v = s.to_numpy()
            # int8: one unsigned comparison catches both negatives and values > 1
            bad = v.view(np.uint8) > 1 if v.dtype == np.int8 else (v < 0) | (v > 1)
            if not bad.any():
                return v.astype(np.int8, copy=False), bad
            return np.where(bad, 0, v).astype(np.int8), bad
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        v = s.astype("string").str.strip().str.lower().map(_LABEL_WORDS).to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~((v == 0) | (v == 1))
    return np.where(bad, 0, v).astype(np.int8), bad


def is_member(values: np.ndarray, catalog: np.ndarray) -> np.ndarray:
    """``np.isin(values, catalog)`` for int64 ids; a direct lookup table when the id range is compact.

    The table costs one pass over ``values`` (``np.isin`` sorts or hashes: ~5x slower on 10M ids).
    """
    if len(catalog) == 0 or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    lo, hi = int(catalog.min()), int(catalog.max())
    span = hi - lo + 1
    if span > max(4 * len(values), 1 << 24):  # sparse ids (hashes, huge ranges): let numpy choose
        return np.isin(values, catalog)
    table = np.zeros(span + 1, dtype=bool)  # last slot: "out of range"
    table[catalog - lo] = True
    # Offsets as unsigned: values below ``lo`` wrap to huge numbers, so one clamp handles both ends.
    idx = (values - lo).view(np.uint64)
    np.minimum(idx, span, out=idx)
    return table[idx]


def validate_events(events: pd.DataFrame, item_ids: np.ndarray, label_columns: list[str], *, file: str,
                    skipped: Counter, strict: bool = False) -> pd.DataFrame:
    """Check and type an events table against the item catalog ``item_ids`` (int64 [n_items]).

    Returns a new frame: user_id/item_id/timestamp int64, label columns int8, ``rating`` float32
    when present, other extra columns unchanged. Rows with missing/invalid ids, unparsable
    timestamps, non-0/1 labels, unparsable ratings or unknown items are dropped and counted in
    ``skipped`` (each row once, under its first problem), or raise when ``strict``.
    ``events.index`` must hold 0-based record positions (row numbers in messages come from it).
    """
    require_columns(events, [*REQUIRED_EVENT_COLUMNS, *label_columns], file, "events")
    rows = _RowFilter(events, file, skipped, strict)
    cols: dict[str, np.ndarray] = {}
    for col in ("user_id", "item_id"):
        cols[col], bad = parse_int_ids(events[col])
        rows.check(bad, f"bad_{col}", f"{col} must be an integer id", col)
    cols["timestamp"], bad = parse_timestamps(events["timestamp"])
    rows.check(bad, "unparsable_timestamp", "timestamp must be unix seconds or an ISO-8601 date-time", "timestamp")
    for col in label_columns:
        cols[col], bad = parse_labels(events[col])
        rows.check(bad, "bad_label", f"label {col!r} must be 0 or 1", col)
    if "rating" in events.columns:
        cols["rating"] = pd.to_numeric(events["rating"], errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan)
        rows.check(~np.isfinite(cols["rating"]), "bad_rating", "rating must be a number", "rating")
    rows.check(~is_member(cols["item_id"], item_ids), "unknown_item", "item_id not in the items table", "item_id")
    keep = rows.keep
    everything = bool(keep.all())
    out = {c: (v if everything else v[keep]) for c, v in cols.items()}
    for c in events.columns:
        if c not in out:
            out[c] = events[c].to_numpy() if everything else events[c].to_numpy()[keep]
    return pd.DataFrame(out, copy=False)


def validate_item_ids(items: pd.DataFrame, *, file: str) -> np.ndarray:
    """int64 item ids; a missing, non-integer or duplicate id is an error (the catalog must be exact)."""
    require_columns(items, REQUIRED_ITEM_COLUMNS, file, "items")
    ids, bad = parse_int_ids(items["item_id"])
    if bad.any():
        raise DataError(f"item_id must be an integer, got {items['item_id'].iloc[int(np.flatnonzero(bad)[0])]!r}",
                        file=file, row=first_row(bad, items.index), column="item_id")
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        pos = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(ids == ids[pos])[0])
        raise DataError(f"duplicate item_id {ids[pos]} (first at row {int(items.index[first]) + 1}); "
                        f"{int(dup.sum())} duplicate rows in all", file=file, row=int(items.index[pos]) + 1,
                        column="item_id")
    return ids


def clean_text(s: pd.Series | None, n: int) -> pd.Series:
    """A text column as plain strings, "" where missing."""
    if s is None:
        return pd.Series([""] * n, dtype=object)
    return s.astype("string").fillna("").str.strip().astype(object)
