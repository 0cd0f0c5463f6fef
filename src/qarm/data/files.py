"""Generic loader: items and events as Parquet or CSV files in the qarm schema (docs/data.md)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qarm.errors import DataError


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """A Parquet (``.parquet``/``.pq``) or CSV (anything else) file as a DataFrame with a RangeIndex.

    CSV columns are read as strings where pandas cannot infer a type cleanly; validation types them.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found", file=str(path))
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            # split_blocks/self_destruct: one pandas block per column, Arrow buffers freed as they
            # convert (no 2-D block consolidation copy; half the time on 10M-row event tables)
            df = pq.read_table(path).to_pandas(split_blocks=True, self_destruct=True)
        else:
            df = pd.read_csv(path, low_memory=False)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what}: {exc}", file=str(path)) from None
    df.columns = [str(c).strip() for c in df.columns]
    return df.reset_index(drop=True)


def resolve_file(name: str, base: str) -> Path:
    """``name`` as given when absolute, else relative to ``base`` (data.path) or the current folder."""
    p = Path(name)
    if p.is_absolute() or not base:
        return p
    return Path(base) / p
