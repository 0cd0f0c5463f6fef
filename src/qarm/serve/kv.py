"""Code stores: where the server looks up an item's VQ and RQ codes.

Three backends answer the same two questions (``get(item_id)``, ``len(store)``):

- ``ParquetCodeStore``: the run's ``codes.parquet`` held in memory as sorted numpy arrays (default);
- ``SqliteCodeStore``: ``sqlite:///PATH`` (SQLAlchemy convention: ``sqlite:///rel.db`` is relative,
  ``sqlite:////abs/codes.db`` absolute), the embedded key-value store;
- ``RedisCodeStore``: ``redis://HOST:PORT/DB``, one string key per item.

``export_codes(run_dir, url)`` writes a run's ``codes.parquet`` into SQLite or Redis. Values are
JSON arrays of ints so that ``sqlite3`` and ``redis-cli`` show them readably:

- SQLite: table ``codes(item_id INTEGER PRIMARY KEY, vq TEXT, rq TEXT)`` and ``meta(key, value)``;
  written to a temp file and renamed (``qarm.io.atomic_path``), so a reader never sees half an export;
  the ``items`` table of ingested items (``qarm.serve.store``) is carried over from the file replaced.
- Redis: key ``qarm:codes:<item_id>`` -> ``{"vq": [...], "rq": [...]}``, and hash ``qarm:codes:meta``
  (n_items, vq_k, rq_levels, run, version, complete). The meta hash is marked incomplete first and complete
  last; readers refuse a store whose last export did not finish. Keys of items absent from the new
  export are deleted, so an export replaces the previous one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import urlsplit

import numpy as np
from tqdm import tqdm

from qarm.errors import DataError, QarmError
from qarm.io import atomic_path, read_parquet

REDIS_PREFIX = "qarm:codes:"
REDIS_META = "qarm:codes:meta"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Codes = tuple[list[int], list[int]]  # (vq, rq)


class CodeStoreError(QarmError):
    """A code store cannot be opened or read (missing file, unreachable Redis, incomplete export)."""


class CodeStore(Protocol):
    url: str
    blocking: bool  # a lookup waits on the network (the server runs it in a worker thread)

    def get(self, item_id: int) -> Codes | None: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- codes.parquet

def read_codes_table(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and check ``RUN/codes.parquet``.

    Returns ``item_ids`` int64 [n] (sorted, unique), ``vq`` int32 [n, K], ``rq`` int32 [n, L].
    """
    path = Path(run_dir) / "codes.parquet"
    if not path.exists():
        raise CodeStoreError(f"{path} is missing: run the 'quantize' stage first "
                             f"(qarm run CONFIG --out {Path(run_dir)})")
    df = read_parquet(path)
    for col in ("item_id", "vq", "rq"):
        if col not in df.columns:
            raise DataError(f"expected columns item_id, vq, rq; got {list(df.columns)}", file=str(path), column=col)
    ids = df["item_id"].to_numpy()
    if ids.dtype.kind not in "iu":
        raise DataError(f"expected int64 item ids, got {ids.dtype}", file=str(path), column="item_id")
    ids = ids.astype(np.int64)
    vq, rq = (_stack_lists(df[col], str(path), col) for col in ("vq", "rq"))
    order = np.argsort(ids, kind="stable")
    ids, vq, rq = ids[order], vq[order], rq[order]
    dup = np.flatnonzero(ids[1:] == ids[:-1])
    if dup.size:
        raise DataError(f"item_id {ids[dup[0]]} appears more than once", file=str(path), column="item_id")
    return ids, vq, rq


def _stack_lists(col, file: str, name: str) -> np.ndarray:
    """A list<int> column -> int32 [n, width]; every row must have the same width."""
    lengths = col.map(len).to_numpy() if len(col) else np.zeros(0, dtype=np.int64)
    if len(col) and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise DataError(f"code list has {lengths[row]} entries, row 0 has {lengths[0]}", file=file, row=row, column=name)
    width = int(lengths[0]) if len(col) else 0
    if not len(col):
        return np.zeros((0, width), dtype=np.int32)
    return np.stack([np.asarray(v, dtype=np.int32) for v in col]).reshape(len(col), width)


class ParquetCodeStore:
    """``codes.parquet`` in memory: a binary search over sorted item ids (12 + 4(K+L) bytes per item)."""

    blocking = False

    def __init__(self, run_dir: str | Path) -> None:
        self.url = str(Path(run_dir) / "codes.parquet")
        self.item_ids_, self.vq_, self.rq_ = read_codes_table(run_dir)

    def get(self, item_id: int) -> Codes | None:
        i = int(np.searchsorted(self.item_ids_, item_id))
        if i == len(self.item_ids_) or self.item_ids_[i] != item_id:
            return None
        return self.vq_[i].tolist(), self.rq_[i].tolist()

    def __len__(self) -> int:
        return len(self.item_ids_)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- URLs

def parse_store_url(url: str) -> tuple[str, str]:
    """``sqlite:///PATH`` -> ("sqlite", PATH); ``redis://HOST:PORT/DB`` -> ("redis", url)."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not path:
            raise QarmError(f"codes store {url!r}: no file path after sqlite:///")
        return "sqlite", path
    if url.startswith("redis://"):
        parts = urlsplit(url)
        db = parts.path.strip("/") or "0"
        if not parts.hostname or not db.isdigit():
            raise QarmError(f"codes store {url!r}: expected redis://HOST:PORT/DB with an integer DB")
        try:
            parts.port
        except ValueError:
            raise QarmError(f"codes store {url!r}: port is not a number") from None
        return "redis", url
    raise QarmError(f"codes store {url!r}: expected sqlite:///PATH or redis://HOST:PORT/DB")


def open_code_store(url: str, run_dir: str | Path) -> CodeStore:
    """The store named by ``url``; ``""`` means the run's ``codes.parquet``."""
    if not url:
        return ParquetCodeStore(run_dir)
    kind, target = parse_store_url(url)
    return SqliteCodeStore(target) if kind == "sqlite" else RedisCodeStore(target)


def _batches(ids: np.ndarray, vq: np.ndarray, rq: np.ndarray, size: int) -> Iterator[list[tuple[int, str, str]]]:
    for start in range(0, len(ids), size):
        yield [(int(i), json.dumps(v), json.dumps(r)) for i, v, r in
               zip(ids[start:start + size].tolist(), vq[start:start + size].tolist(), rq[start:start + size].tolist())]


# --------------------------------------------------------------------------- SQLite

class SqliteCodeStore:
    """Read-only SQLite code table; one connection per server thread (sqlite3 objects are not shared)."""

    blocking = False  # a primary-key read of a local file: microseconds

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        if not self.path.is_file():
            raise CodeStoreError(f"{self.url}: no such file; write it with qarm export-codes --run DIR --to {self.url}")
        self._local = threading.local()
        try:
            meta = dict(self._conn().execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise CodeStoreError(f"{self.url}: not a qarm codes database ({exc})") from None
        self.meta = meta
        self._n = int(meta.get("n_items", 0))

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self._local.conn = conn
        return conn

    def get(self, item_id: int) -> Codes | None:
        try:
            row = self._conn().execute("SELECT vq, rq FROM codes WHERE item_id = ?", (item_id,)).fetchone()
        except sqlite3.Error as exc:  # file removed or corrupted under the server
            raise CodeStoreError(f"{self.url}: {exc}") from None
        return None if row is None else (json.loads(row[0]), json.loads(row[1]))

    def __len__(self) -> int:
        return self._n

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _export_sqlite(path: Path, ids: np.ndarray, vq: np.ndarray, rq: np.ndarray, meta: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        conn = sqlite3.connect(tmp)
        try:
            conn.execute("CREATE TABLE codes (item_id INTEGER PRIMARY KEY, vq TEXT NOT NULL, rq TEXT NOT NULL)")
            conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            for batch in tqdm(_batches(ids, vq, rq, 10_000), total=-(-len(ids) // 10_000),
                              desc="export sqlite", unit="batch", disable=len(ids) < 100_000):
                conn.executemany("INSERT INTO codes VALUES (?, ?, ?)", batch)
            conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
            conn.commit()
            _carry_items_table(path, conn)
        finally:
            conn.close()


def _carry_items_table(old: Path, conn: sqlite3.Connection) -> None:
    """Copy the ``items`` table (items added with POST /items, ``qarm.serve.store``) of the file an
    export replaces into the new file: an export replaces the catalogue, not the ingested items."""
    from qarm.serve.store import SqliteItemStore

    conn.execute(SqliteItemStore.SCHEMA)
    if old.is_file():
        conn.execute("ATTACH DATABASE ? AS old", (str(old),))
        try:
            if conn.execute("SELECT 1 FROM old.sqlite_master WHERE type = 'table' AND name = 'items'").fetchone():
                conn.execute("INSERT INTO items SELECT item_id, version, value FROM old.items")
            conn.commit()
        finally:
            conn.execute("DETACH DATABASE old")
    conn.commit()


# --------------------------------------------------------------------------- Redis

def _redis_client(url: str):
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)


class RedisCodeStore:
    """Codes in Redis: ``GET qarm:codes:<item_id>`` per lookup (redis-py's pool is thread-safe)."""

    blocking = True

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self.client_ = _redis_client(url)
        try:
            meta = {k.decode(): v.decode() for k, v in self.client_.hgetall(REDIS_META).items()}
        except redis.RedisError as exc:
            raise CodeStoreError(f"{url}: cannot read from Redis ({exc})") from None
        if meta.get("complete") != "1":
            state = "no qarm codes export" if not meta else "an unfinished qarm codes export"
            raise CodeStoreError(f"{url}: holds {state}; run qarm export-codes --run DIR --to {url}")
        self.meta = meta
        self._n = int(meta["n_items"])

    def get(self, item_id: int) -> Codes | None:
        import redis

        try:
            raw = self.client_.get(f"{REDIS_PREFIX}{item_id}")
        except redis.RedisError as exc:  # Redis down or unreachable: the store's fault, not the request's
            raise CodeStoreError(f"{self.url}: {exc}") from None
        if raw is None:
            return None
        value = json.loads(raw)
        return value["vq"], value["rq"]

    def __len__(self) -> int:
        return self._n

    def close(self) -> None:
        self.client_.close()


def _export_redis(url: str, ids: np.ndarray, vq: np.ndarray, rq: np.ndarray, meta: dict[str, str]) -> None:
    import redis

    client = _redis_client(url)
    try:
        client.delete(REDIS_META)
        client.hset(REDIS_META, mapping={**meta, "complete": "0"})
        for batch in tqdm(_batches(ids, vq, rq, 5_000), total=-(-len(ids) // 5_000),
                          desc="export redis", unit="batch", disable=len(ids) < 100_000):
            pipe = client.pipeline(transaction=False)
            for item_id, v, r in batch:
                pipe.set(f"{REDIS_PREFIX}{item_id}", f'{{"vq": {v}, "rq": {r}}}')
            pipe.execute()
        # drop keys of items the new export no longer has (a re-export replaces, never merges)
        keep = set(ids.tolist())
        stale = []
        for key in client.scan_iter(match=f"{REDIS_PREFIX}*", count=5_000):
            suffix = key.decode()[len(REDIS_PREFIX):]
            if suffix.lstrip("-").isdigit() and int(suffix) not in keep:
                stale.append(key)
        for start in range(0, len(stale), 5_000):
            client.unlink(*stale[start:start + 5_000])
        client.hset(REDIS_META, "complete", "1")
    except redis.RedisError as exc:
        raise CodeStoreError(f"{url}: export failed ({exc}); the store is marked incomplete, rerun the export") from None
    finally:
        client.close()


# --------------------------------------------------------------------------- export

def export_codes(run_dir: str | Path, url: str) -> int:
    """Write ``RUN/codes.parquet`` into the store ``url`` (sqlite:///PATH or redis://HOST:PORT/DB).

    Returns the number of items written. The previous content of the store is replaced.
    """
    kind, target = parse_store_url(url)
    ids, vq, rq = read_codes_table(run_dir)
    from qarm.serve.store import codebook_version

    meta = {"n_items": str(len(ids)), "vq_k": str(vq.shape[1]), "rq_levels": str(rq.shape[1]),
            "run": str(Path(run_dir).resolve()), "version": codebook_version(run_dir),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if kind == "sqlite":
        _export_sqlite(Path(target), ids, vq, rq, meta)
    else:
        _export_redis(target, ids, vq, rq, meta)
    return len(ids)
