"""The codes table (``codes.parquet``, ``qarm assign`` output): its schema and how it is built.

A module of its own, below every estimator and the stage, so that the stage, the Parquet streamer and
``qarm assign`` all write one schema without importing each other.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

CODES_SCHEMA = pa.schema([("item_id", pa.int64()), ("vq", pa.list_(pa.int32())), ("rq", pa.list_(pa.int32()))])


def code_lists(codes: np.ndarray) -> pa.Array:
    """codes int [n, m] -> list<int32> array of n lists of m codes (one offsets buffer, no Python loop)."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"expected codes of shape [n, m], got {codes.shape}")
    offsets = (np.arange(len(codes) + 1, dtype=np.int64) * codes.shape[1]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(codes.ravel().astype(np.int32)))


def codes_table(item_ids: np.ndarray, vq: np.ndarray | None, rq: np.ndarray) -> pa.Table:
    """codes.parquet: item_id int64 [n], vq list<int32> [K] (left out when ``vq`` is None), rq list<int32> [L]."""
    columns = {"item_id": pa.array(np.asarray(item_ids, np.int64))}
    if vq is not None:
        columns["vq"] = code_lists(vq)
    columns["rq"] = code_lists(rq)
    return pa.table(columns)
