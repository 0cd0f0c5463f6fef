"""Input checks for embedding matrices: one clear error naming the rows, never a deep traceback."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np

from qarm.errors import DataError, QarmError


class EmbeddingError(DataError):
    """An embedding matrix has the wrong shape, non-finite values or zero rows."""


class QuantizeError(QarmError):
    """A quantiser was asked for something its data or state cannot give (K larger than the pool, unfitted model)."""


class ParamsMixin:
    """``get_params`` / ``set_params`` read off the constructor's signature, which is all
    ``sklearn.base.clone`` needs (without importing scikit-learn into the transform path).

    Subclasses store every constructor argument untouched under its own name and validate in ``fit``.
    """

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> ParamsMixin:
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; valid: {', '.join(valid)}")
            setattr(self, name, value)
        return self


def check_int(value, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or a QuantizeError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise QuantizeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise QuantizeError(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")
    return value


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


def check_codes(codes: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """``codes`` as an int array [n, L] with level l's codes in [0, sizes[l]); else a QuantizeError naming the rows."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != len(sizes):
        raise QuantizeError(f"expected codes of shape [n, {len(sizes)}], got {codes.shape}")
    for level, k in enumerate(sizes):
        bad = np.flatnonzero((codes[:, level] < 0) | (codes[:, level] >= k))
        if bad.size:
            raise QuantizeError(f"level {level + 1} codes must lie in [0, {k}); rows {bad[:10].tolist()} do not")
    return codes
