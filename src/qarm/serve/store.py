"""The item store: codes (and dense vectors) of items added to a running server with ``POST /items``.

The run's catalogue codes stay where they are (``codes.parquet`` or an export, ``qarm.serve.kv``);
ingested items live beside them in a writable layer of the same store:

- ``MemoryItemStore`` (``codes_store`` = ""): a dict in the server process; gone when it stops;
- ``SqliteItemStore`` (``sqlite:///PATH``): table ``items(item_id INTEGER PRIMARY KEY, version TEXT,
  value TEXT)`` in the export's file; a write commits (``synchronous=FULL``) before it returns;
- ``RedisItemStore`` (``redis://HOST:PORT/DB``): key ``qarm:items:<item_id>`` -> value, plus the set
  ``qarm:items:ids``; a batch is one ``MULTI``/``EXEC`` transaction, so Redis applies all of it or none.

Every item is one value (JSON: codes, dense vectors, codebook version, run), written as one key or
row: two concurrent writes of the same id leave one of them whole, never a mix. Each entry records
the codebook version that coded it (``codebook_version``); a server serves only entries of its own
version, so codes made by other codebooks never reach its ranker.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from qarm.errors import DataError
from qarm.io import path_sha256
from qarm.serve.kv import CodeStoreError, parse_store_url

REDIS_ITEM_PREFIX = "qarm:items:"
REDIS_ITEM_IDS = "qarm:items:ids"


def codebook_version(run_dir: str | Path) -> str:
    """What decides an item's codes from its content: the aligned encoder and the frozen pool and
    codebooks (``align/encoder.pt`` + ``quant/``). 16 hex chars of their SHA-256; a run without
    them (a lookup-only folder) is versioned by its ``codes.parquet``."""
    run_dir = Path(run_dir)
    parts = [p for p in (run_dir / "align" / "encoder.pt", run_dir / "quant") if p.exists()]
    if not parts:
        parts = [run_dir / "codes.parquet"]
        if not parts[0].exists():
            raise CodeStoreError(f"{run_dir}: no align/encoder.pt, quant/ or codes.parquet to version codes by")
    h = hashlib.sha256()
    for p in parts:
        h.update(p.name.encode())
        h.update(path_sha256(p).encode())
    return h.hexdigest()[:16]


def _b64_vector(v: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode()


@dataclass(frozen=True)
class StoredItem:
    """One ingested item. vq int [K] (pool positions), rq int [L]; dense: file name -> float32 [d]
    (``emb_aligned.npy``/``emb_raw.npy``, what dense ranker variants read); ``catalogue``: the id is
    a catalogue item whose codes this entry overrides (``overwrite`` was asked for)."""

    item_id: int
    vq: list[int]
    rq: list[int]
    version: str
    run: str
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    catalogue: bool = False
    written_at: float = 0.0

    def to_json(self) -> str:
        # float32 vectors as base64 of their little-endian bytes: exact, and a quarter of JSON floats' size
        return json.dumps({"item_id": self.item_id, "vq": list(map(int, self.vq)), "rq": list(map(int, self.rq)),
                           "version": self.version, "run": self.run, "catalogue": self.catalogue,
                           "written_at": self.written_at,
                           "dense": {k: _b64_vector(v) for k, v in sorted(self.dense.items())}},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes, where: str) -> StoredItem:
        try:
            d = json.loads(raw)
            dense = {k: np.frombuffer(base64.b64decode(v), dtype="<f4").astype(np.float32)
                     for k, v in d.get("dense", {}).items()}
            return cls(int(d["item_id"]), [int(x) for x in d["vq"]], [int(x) for x in d["rq"]], str(d["version"]),
                       str(d.get("run", "")), dense, bool(d.get("catalogue", False)), float(d.get("written_at", 0)))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"stored item is not a qarm item entry ({type(exc).__name__}: {exc})", file=where) from None


class ItemStore(Protocol):
    url: str
    blocking: bool  # a call waits on the network: the server runs it in a worker thread

    def get_many(self, item_ids: list[int]) -> dict[int, StoredItem]: ...

    def put_many(self, items: list[StoredItem]) -> None: ...

    def delete(self, item_id: int) -> bool: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


class MemoryItemStore:
    """Ingested items in a dict of the server process (not kept across restarts)."""

    blocking = False
    url = "memory://"

    def __init__(self) -> None:
        self._items: dict[int, str] = {}  # serialised, so a reader never shares a mutable entry
        self._lock = threading.Lock()

    def get_many(self, item_ids: list[int]) -> dict[int, StoredItem]:
        with self._lock:
            raw = {i: self._items[i] for i in item_ids if i in self._items}
        return {i: StoredItem.from_json(v, self.url) for i, v in raw.items()}

    def put_many(self, items: list[StoredItem]) -> None:
        values = {it.item_id: it.to_json() for it in items}
        with self._lock:
            self._items.update(values)

    def delete(self, item_id: int) -> bool:
        with self._lock:
            return self._items.pop(item_id, None) is not None

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        pass


class SqliteItemStore:
    """Table ``items`` of an SQLite file, read-write; one connection per thread."""

    blocking = False  # a primary-key read or a one-row commit of a local file

    SCHEMA = "CREATE TABLE IF NOT EXISTS items (item_id INTEGER PRIMARY KEY, version TEXT NOT NULL, value TEXT NOT NULL)"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        if not self.path.is_file():
            raise CodeStoreError(f"{self.url}: no such file; write it with qarm export-codes --run DIR --to {self.url}")
        self._local = threading.local()
        try:
            self._conn().execute(self.SCHEMA)
        except sqlite3.Error as exc:
            raise CodeStoreError(f"{self.url}: cannot open the items table for writing ({exc})") from None

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous=FULL")  # COMMIT returns once the rows are on disk
            self._local.conn = conn
        return conn

    def get_many(self, item_ids: list[int]) -> dict[int, StoredItem]:
        out: dict[int, StoredItem] = {}
        try:
            conn = self._conn()
            for s in range(0, len(item_ids), 500):  # SQLite's bound-parameter limit
                chunk = item_ids[s:s + 500]
                q = f"SELECT item_id, value FROM items WHERE item_id IN ({','.join('?' * len(chunk))})"
                for i, v in conn.execute(q, chunk).fetchall():
                    out[int(i)] = StoredItem.from_json(v, f"{self.url} items row {i}")
        except sqlite3.Error as exc:
            raise CodeStoreError(f"{self.url}: {exc}") from None
        return out

    def put_many(self, items: list[StoredItem]) -> None:
        rows = [(it.item_id, it.version, it.to_json()) for it in items]
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise CodeStoreError(f"{self.url}: write failed, nothing written ({exc})") from None

    def delete(self, item_id: int) -> bool:
        try:
            return self._conn().execute("DELETE FROM items WHERE item_id = ?", (item_id,)).rowcount > 0
        except sqlite3.Error as exc:
            raise CodeStoreError(f"{self.url}: {exc}") from None

    def __len__(self) -> int:
        try:
            return int(self._conn().execute("SELECT COUNT(*) FROM items").fetchone()[0])
        except sqlite3.Error as exc:
            raise CodeStoreError(f"{self.url}: {exc}") from None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class RedisItemStore:
    """``qarm:items:<id>`` string keys and the ``qarm:items:ids`` set; batches as MULTI/EXEC."""

    blocking = True

    def __init__(self, url: str) -> None:
        from qarm.serve.kv import _redis_client

        self.url = url
        self.client_ = _redis_client(url)

    def _fail(self, exc: Exception, what: str) -> CodeStoreError:
        return CodeStoreError(f"{self.url}: {what} ({type(exc).__name__}: {exc})")

    def get_many(self, item_ids: list[int]) -> dict[int, StoredItem]:
        import redis

        if not item_ids:
            return {}
        try:
            values = self.client_.mget([f"{REDIS_ITEM_PREFIX}{i}" for i in item_ids])
        except redis.RedisError as exc:
            raise self._fail(exc, "cannot read ingested items") from None
        return {i: StoredItem.from_json(v, f"{self.url} key {REDIS_ITEM_PREFIX}{i}")
                for i, v in zip(item_ids, values) if v is not None}

    def put_many(self, items: list[StoredItem]) -> None:
        import redis

        pipe = self.client_.pipeline(transaction=True)  # MULTI ... EXEC: all of the batch or nothing
        for it in items:
            pipe.set(f"{REDIS_ITEM_PREFIX}{it.item_id}", it.to_json())
            pipe.sadd(REDIS_ITEM_IDS, it.item_id)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise self._fail(exc, "write failed, nothing written") from None

    def delete(self, item_id: int) -> bool:
        import redis

        pipe = self.client_.pipeline(transaction=True)
        pipe.delete(f"{REDIS_ITEM_PREFIX}{item_id}")
        pipe.srem(REDIS_ITEM_IDS, item_id)
        try:
            n, _ = pipe.execute()
        except redis.RedisError as exc:
            raise self._fail(exc, "delete failed") from None
        return bool(n)

    def __len__(self) -> int:
        import redis

        try:
            return int(self.client_.scard(REDIS_ITEM_IDS))
        except redis.RedisError as exc:
            raise self._fail(exc, "cannot count ingested items") from None

    def close(self) -> None:
        self.client_.close()


def open_item_store(url: str) -> ItemStore:
    """The writable layer beside the code store ``url`` ("" = in memory)."""
    if not url:
        return MemoryItemStore()
    kind, target = parse_store_url(url)
    return SqliteItemStore(target) if kind == "sqlite" else RedisItemStore(target)


def now() -> float:
    return round(time.time(), 3)
