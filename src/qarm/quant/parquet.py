"""Embeddings in Parquet: stream a list<float> column batch by batch (catalogues larger than memory)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qarm.io import atomic_path
from qarm.quant.checks import EmbeddingError
from qarm.quant.schema import codes_table


def iter_embedding_batches(path: str | Path, column: str = "embedding", batch_rows: int = 65536,
                           with_ids: str | None = None) -> Iterator:
    """Yield float32 [b, dim] blocks of ``column`` (list<float> or fixed_size_list<float>) from a Parquet file.

    With ``with_ids`` (a column name) yields ``(ids int64 [b], emb float32 [b, dim])`` instead.
    """
    path = Path(path)
    if not path.exists():
        raise EmbeddingError("file not found", file=str(path))
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    for col in [column] + ([with_ids] if with_ids else []):
        if col not in names:
            raise EmbeddingError(f"no column {col!r}; columns: {', '.join(names)}", file=str(path), column=col)
    dim = None
    row = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=[column] + ([with_ids] if with_ids else [])):
        arr = batch.column(0)
        if not (pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type)):
            raise EmbeddingError(f"expected a list<float> column, got {arr.type}", file=str(path), column=column)
        if arr.null_count:
            bad = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))
            raise EmbeddingError(f"null embedding in rows {(bad[:10] + row).tolist()}", file=str(path), column=column)
        lengths = arr.value_lengths().to_numpy(zero_copy_only=False) if not pa.types.is_fixed_size_list(arr.type) \
            else np.full(len(arr), arr.type.list_size)
        dim = dim or (int(lengths[0]) if len(lengths) else None)
        bad = np.flatnonzero(lengths != dim)
        if bad.size:
            raise EmbeddingError(f"rows {(bad[:10] + row).tolist()} have embedding length {int(lengths[bad[0]])}, "
                                 f"expected {dim}", file=str(path), column=column)
        values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        emb = values.reshape(len(arr), dim)
        row += len(arr)
        if with_ids:
            yield batch.column(1).to_numpy(zero_copy_only=False).astype(np.int64), emb
        else:
            yield emb


def code_parquet_catalogue(rq, in_path: str | Path, out_path: str | Path, *, column: str = "embedding",
                           id_column: str = "item_id", vq=None, batch_rows: int = 65536) -> int:
    """Code a catalogue stored as Parquet (``id_column``, ``column`` list<float>) batch by batch.

    Writes ``out_path`` (item_id, rq list<int32>[, vq list<int32>]) one row group per batch, atomically, so
    neither the embeddings nor the codes of the whole catalogue are ever in memory. Returns the row count.
    """
    n = 0
    writer = None
    with atomic_path(out_path) as tmp:
        for ids, emb in iter_embedding_batches(in_path, column, batch_rows, with_ids=id_column):
            rq_codes = next(rq.transform_batches(iter([emb])))
            table = codes_table(ids, None if vq is None else vq.transform(emb, item_ids=ids), rq_codes)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
            n += len(ids)
        if writer is None:
            raise EmbeddingError("no rows", file=str(in_path))
        writer.close()
    return n
