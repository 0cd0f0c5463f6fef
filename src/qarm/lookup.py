"""The one id -> row lookup every stage uses.

Catalogues and user vocabularies are kept as sorted int64 id arrays; a row is a position in that
array. ``IdIndex`` answers "which row holds this id" for a whole array at once (one
``searchsorted``), with a caller-chosen value for ids it does not hold, so no stage re-implements
the clip-and-compare dance.
"""

from __future__ import annotations

import numpy as np

from qarm.errors import DataError


class IdIndex:
    """Sorted unique int64 ids -> rows.

    ids: int64 [n], any order; a row is the position of an id in the array as given (when the
    array is not sorted, a stable argsort maps sorted positions back). Duplicates are an error,
    since a row must name one id. ``rows(ids)`` is O(m log n) for m queries. ``.ids`` is the
    sorted id array.
    """

    def __init__(self, ids: np.ndarray, assume_sorted: bool = False, name: str = "item_id") -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        self._order: np.ndarray | None = None
        if not assume_sorted and len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
            self._order = np.argsort(ids, kind="stable")
            ids = ids[self._order]
        if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
            dup = ids[1:][ids[1:] == ids[:-1]]
            if len(dup):
                raise DataError(f"{len(dup)} duplicate {name}(s), first {int(dup[0])}: ids must be unique",
                                column=name)
            raise DataError(f"{name}s are not sorted ascending (drop assume_sorted=True)", column=name)
        self.ids = ids
        self.name = name

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids int64 [...] -> (rows int64 [...], found bool [...]); rows of missing ids are 0."""
        q = np.asarray(ids, dtype=np.int64)
        if not len(self.ids):
            return np.zeros(q.shape, np.int64), np.zeros(q.shape, bool)
        pos = np.searchsorted(self.ids, q).clip(0, len(self.ids) - 1)
        found = self.ids[pos] == q
        if self._order is not None:
            pos = self._order[pos]
        return np.where(found, pos, 0).astype(np.int64), found

    def rows(self, ids: np.ndarray, missing: int | None = None, offset: int = 0) -> np.ndarray:
        """ids int64 [...] -> rows int64 [...] (+ ``offset``). A missing id maps to ``missing``;
        with ``missing=None`` it raises DataError naming the first one."""
        pos, found = self.find(ids)
        if missing is None:
            if not found.all():
                bad = np.asarray(ids, np.int64)[~found]
                raise DataError(f"{len(bad)} {self.name}(s) not in the catalogue, first {int(bad.reshape(-1)[0])}",
                                column=self.name)
            return pos + offset
        return np.where(found, pos + offset, missing).astype(np.int64)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """ids int64 [...] -> bool [...]."""
        return self.find(ids)[1]
