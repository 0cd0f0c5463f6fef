"""Input checks for embedding matrices: one clear error naming the rows, never a deep traceback."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qarm.errors import DataError, QarmError


class EmbeddingError(DataError):
    """An embedding matrix has the wrong shape, non-finite values or zero rows."""


class QuantizeError(QarmError):
    """A quantiser was asked for something its data or state cannot give (K larger than the pool, unfitted model)."""


def _name_rows(rows: np.ndarray, ids: Sequence[int] | np.ndarray | None, offset: int, limit: int = 10) -> str:
    shown = rows[:limit]
    text = ", ".join(str(int(r) + offset) for r in shown)
    if ids is not None:
        text += " (item_id " + ", ".join(str(int(ids[int(r) + offset])) for r in shown) + ")"
    if len(rows) > limit:
        text += f" and {len(rows) - limit} more"
    return text


def check_embeddings(emb: np.ndarray, source: str, *, dim: int | None = None, ids: Sequence[int] | None = None,
                     allow_zero: bool = False, offset: int = 0) -> np.ndarray:
    """Validate ``emb`` float [n, d] and return it as C-contiguous float32.

    ``source`` names the file or argument in the message; ``dim`` is the dimension the fitted model expects;
    ``ids`` (item ids by row, optional) and ``offset`` (row number of ``emb[0]`` in the source) make
    the message point at the exact rows.
    """
    emb = np.asarray(emb)
    if emb.ndim != 2:
        raise EmbeddingError(f"expected a 2-D embedding matrix [n, dim], got shape {emb.shape}", file=source)
    if dim is not None and emb.shape[1] != dim:
        raise EmbeddingError(f"embedding dimension mismatch: expected {dim} (the dimension the codebooks and pool "
                             f"were fitted on), got {emb.shape[1]}", file=source)
    if not np.issubdtype(emb.dtype, np.number):
        raise EmbeddingError(f"expected numeric embeddings, got dtype {emb.dtype}", file=source)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if bad.size:
        raise EmbeddingError(f"{bad.size} row(s) contain NaN or inf: rows {_name_rows(bad, ids, offset)}", file=source)
    if not allow_zero:
        zero = np.flatnonzero(np.einsum("ij,ij->i", emb, emb) <= 1e-24)
        if zero.size:
            raise EmbeddingError(f"{zero.size} row(s) are zero vectors (no content to code): rows "
                                 f"{_name_rows(zero, ids, offset)}", file=source)
    return emb
