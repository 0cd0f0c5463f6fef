"""Bring your own item embeddings: vectors from the team's own multi-modal model as a frozen tower feature.

``align.item_embeddings`` names them: an ``.npy`` float [n, d] whose rows are the ids in
``align.item_embedding_ids`` (an ``.npy`` int64 [n]); a Parquet/CSV table with ``item_id`` and a
fixed-size list column ``align.item_embedding_column``; or ``items``: that column of the items
frame itself (items.parquet, or the frame given to ``ItemEncoder.encode``). The vectors enter the
fusion as modality ``given``; alignment trains the head on top and no text or image tower runs.
An item without a vector is encoded from the learned placeholder and counted (``missing_given``);
a vector of the wrong size or with NaN/inf is a DataError naming file, row and column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qarm.errors import ConfigError, DataError
from qarm.io import read_npy
from qarm.lookup import IdIndex

GIVEN = "given"  # modality name of user-supplied embeddings


def given_spec(item_embeddings: str, ids_path: str, column: str) -> dict | None:
    """What locates the vectors, as plain data (saved in encoder.pt); None when not configured."""
    if not item_embeddings:
        return None
    source = item_embeddings if item_embeddings == "items" else str(Path(item_embeddings).expanduser().resolve())
    if source.endswith(".npy") and not ids_path:
        raise ConfigError("align.item_embedding_ids: an .npy of item embeddings needs the .npy of the item id "
                          "of each of its rows")
    return {"source": source, "ids": str(Path(ids_path).expanduser().resolve()) if ids_path else "",
            "column": column}


def list_column(values, file: str, column: str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A list column (Arrow or pandas of arrays/None) -> (float32 [n, d], ok bool [n]); errors name the row."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else None
    if arr is not None and pa.types.is_fixed_size_list(arr.type):
        d = arr.type.list_size
        flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        ok = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        out = np.zeros((len(arr), d), np.float32)
        out[ok] = flat.reshape(-1, d) if len(flat) == ok.sum() * d else flat.reshape(len(arr), d)[ok]
    else:
        seq = values.to_pylist() if isinstance(values, (pa.ChunkedArray, pa.Array)) else list(values)
        ok = np.array([v is not None and not (isinstance(v, float) and np.isnan(v)) for v in seq], dtype=bool)
        if not ok.any():
            return np.zeros((len(seq), dim or 0), np.float32), ok
        sizes = {len(v) for v, good in zip(seq, ok) if good}
        d = dim or max(sizes)
        out = np.zeros((len(seq), d), np.float32)
        for i in np.flatnonzero(ok):
            v = np.asarray(seq[i], dtype=np.float32).reshape(-1)
            if len(v) != d:
                raise DataError(f"embedding has {len(v)} values, expected {d} (a fixed-size list)", file=file,
                                row=int(i), column=column)
            out[i] = v
    if dim is not None and out.shape[1] != dim:
        raise DataError(f"embeddings have {out.shape[1]} dimensions, the encoder was trained on {dim}",
                        file=file, column=column)
    bad = np.flatnonzero(ok & ~np.isfinite(out).all(axis=1))
    if bad.size:
        raise DataError(f"embedding has NaN or inf ({bad.size} such rows)", file=file, row=int(bad[0]), column=column)
    return out, ok


def _table_vectors(path: Path, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids int64 [m], vectors float32 [m, d], ok [m]) of a Parquet/CSV table with item_id + a list column."""
    if not path.is_file():
        raise DataError("item embeddings file not found", file=str(path))
    if path.suffix.lower() in (".parquet", ".pq"):
        table = pq.read_table(path)
        names = table.column_names
        if "item_id" not in names or column not in names:
            missing = "item_id" if "item_id" not in names else column
            raise DataError(f"missing column; has {', '.join(names)}", file=str(path), column=missing)
        ids = table.column("item_id").to_numpy()
        vec, ok = list_column(table.column(column), str(path), column)
    else:  # CSV: the list as a JSON-like "[0.1, 0.2, ...]" string
        df = pd.read_csv(path, keep_default_na=False, na_values=[""])
        for c in ("item_id", column):
            if c not in df.columns:
                raise DataError(f"missing column; has {', '.join(map(str, df.columns))}", file=str(path), column=c)
        ids = df["item_id"].to_numpy()
        parsed = []
        for i, s in enumerate(df[column].tolist()):
            if s is None or (isinstance(s, float) and np.isnan(s)):
                parsed.append(None)
                continue
            try:
                parsed.append([float(x) for x in str(s).strip().strip("[]").split(",")])
            except ValueError:
                raise DataError(f"expected a list of numbers like [0.1, 0.2], got {str(s)[:40]!r}", file=str(path),
                                row=i, column=column) from None
        vec, ok = list_column(parsed, str(path), column)
    return np.asarray(ids, dtype=np.int64), vec, ok


def load_given(spec: dict, items: pd.DataFrame, file: str = "items", dim: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Vectors for the rows of ``items``: (float32 [n, d], ok bool [n]).

    A frame carrying the list column is read directly (new items at assign/serve time bring their
    own vector); otherwise the configured source is looked up by item id."""
    column = spec["column"]
    if column in items.columns:
        return list_column(pa.chunked_array([pa.array(items[column].tolist())]) if len(items) else [], file,
                           column, dim)
    source = spec["source"]
    if source == "items":
        raise DataError(f"align.item_embeddings=items, but the items have no {column!r} column", file=file,
                        column=column)
    path = Path(source)
    if path.suffix.lower() == ".npy":
        vec = read_npy(path)
        if vec is None:
            raise DataError("item embeddings file not found", file=str(path))
        ids = read_npy(Path(spec["ids"]))
        if ids is None:
            raise DataError("item embedding ids file not found (align.item_embedding_ids)", file=spec["ids"])
        if vec.ndim != 2 or len(ids) != len(vec):
            raise DataError(f"expected float [n, d] rows for the {len(ids)} ids of {spec['ids']}, got shape "
                            f"{tuple(vec.shape)}", file=str(path))
        vec = np.asarray(vec, dtype=np.float32)
        ok_src = np.isfinite(vec).all(axis=1)
        if not ok_src.all():
            raise DataError(f"embedding has NaN or inf ({int((~ok_src).sum())} such rows)", file=str(path),
                            row=int(np.flatnonzero(~ok_src)[0]))
        ids = np.asarray(ids, dtype=np.int64)
        ok_src = np.ones(len(ids), bool)
    else:
        ids, vec, ok_src = _table_vectors(path, column)
    if dim is not None and vec.shape[1] != dim:
        raise DataError(f"embeddings have {vec.shape[1]} dimensions, the encoder was trained on {dim}",
                        file=str(path), column=column)
    rows, found = IdIndex(ids, name="item_id").find(items["item_id"].to_numpy(np.int64))
    out = np.zeros((len(items), vec.shape[1]), np.float32)
    ok = found & ok_src[rows]
    out[ok] = vec[rows[ok]]
    return out, ok
