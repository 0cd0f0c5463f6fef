"""Code stores: export to SQLite and a real redis-server, read back exactly, refuse broken input."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from qarm.errors import DataError, QarmError
from qarm.io import write_parquet
from qarm.serve.kv import (CodeStoreError, ParquetCodeStore, RedisCodeStore, SqliteCodeStore, export_codes,
                           open_code_store, parse_store_url, read_codes_table)


def _all_codes(store, ids) -> dict[int, tuple[list[int], list[int]]]:
    return {int(i): store.get(int(i)) for i in ids}


def test_sqlite_export_round_trips_the_real_codes(lookup_run, tmp_path):
    ids, vq, rq = read_codes_table(lookup_run)
    url = f"sqlite:///{tmp_path / 'codes.db'}"
    assert export_codes(lookup_run, url) == len(ids)
    store = open_code_store(url, lookup_run)
    assert isinstance(store, SqliteCodeStore) and len(store) == len(ids)
    parquet = ParquetCodeStore(lookup_run)
    assert _all_codes(store, ids) == _all_codes(parquet, ids)
    assert store.get(int(ids.max()) + 1) is None and parquet.get(int(ids.min()) - 1) is None
    assert store.meta["vq_k"] == str(vq.shape[1]) and store.meta["rq_levels"] == str(rq.shape[1])
    # readable with plain sqlite3: JSON arrays keyed by item id
    with sqlite3.connect(tmp_path / "codes.db") as conn:
        row = conn.execute("SELECT vq, rq FROM codes WHERE item_id = ?", (int(ids[0]),)).fetchone()
    assert row == (json.dumps(vq[0].tolist()), json.dumps(rq[0].tolist()))


def test_redis_export_round_trips_and_replaces(lookup_run, redis_server, tmp_path):
    ids, vq, rq = read_codes_table(lookup_run)
    assert export_codes(lookup_run, redis_server.url) == len(ids)
    store = open_code_store(redis_server.url, lookup_run)
    assert isinstance(store, RedisCodeStore) and len(store) == len(ids)
    assert _all_codes(store, ids) == _all_codes(ParquetCodeStore(lookup_run), ids)

    # a second export of a smaller run replaces the first one: no stale keys survive
    small = tmp_path / "small"
    keep = ids[::2]
    write_parquet(small / "codes.parquet", pd.DataFrame({"item_id": keep, "vq": list(vq[::2] + 1),
                                                         "rq": list(rq[::2])}))
    assert export_codes(small, redis_server.url) == len(keep)
    store = RedisCodeStore(redis_server.url)
    assert len(store) == len(keep)
    assert store.get(int(ids[1])) is None
    assert store.get(int(keep[3])) == ((vq[6] + 1).tolist(), rq[6].tolist())
    n_keys = len(list(store.client_.scan_iter(match="qarm:codes:*", count=1000)))
    assert n_keys == len(keep) + 1  # items + the meta hash

    # an export that never finished is refused by readers
    store.client_.hset("qarm:codes:meta", "complete", "0")
    with pytest.raises(CodeStoreError, match="unfinished"):
        RedisCodeStore(redis_server.url)
    store.client_.flushdb()
    with pytest.raises(CodeStoreError, match="no qarm codes export"):
        RedisCodeStore(redis_server.url)


def test_export_codes_cli(lookup_run, tmp_path):
    db = tmp_path / "cli.db"
    ok = subprocess.run([sys.executable, "-m", "qarm", "export-codes", "--run", str(lookup_run),
                         "--to", f"sqlite:///{db}"], capture_output=True, text=True, timeout=60)
    n = len(read_codes_table(lookup_run)[0])
    assert ok.returncode == 0 and f"exported codes of {n} items" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "qarm", "export-codes", "--run", str(lookup_run),
                          "--to", "mysql://x"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "expected sqlite:///PATH or redis://HOST:PORT/DB" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("url, match", [
    ("", "expected sqlite"), ("sqlite:///", "no file path"), ("redis://:6379/0", "HOST:PORT/DB"),
    ("redis://localhost:6379/x", "integer DB"), ("redis://localhost:port/0", "port is not a number"),
    ("postgres://h/db", "expected sqlite"),
])
def test_bad_store_urls_are_named(url, match):
    with pytest.raises(QarmError, match=match):
        parse_store_url(url)


def test_unreadable_stores_give_clear_errors(tmp_path):
    with pytest.raises(CodeStoreError, match="run the 'quantize' stage first"):
        read_codes_table(tmp_path)
    with pytest.raises(CodeStoreError, match="no such file"):
        SqliteCodeStore(tmp_path / "missing.db")
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    with pytest.raises(CodeStoreError, match="not a qarm codes database"):
        SqliteCodeStore(tmp_path / "junk.db")
    with pytest.raises(CodeStoreError, match="cannot read from Redis"):
        RedisCodeStore("redis://127.0.0.1:1/0")  # nothing listens on port 1


def test_malformed_code_tables_name_row_and_column(tmp_path):
    path = tmp_path / "codes.parquet"
    write_parquet(path, pd.DataFrame({"item_id": [1, 2, 1], "vq": [[1, 2]] * 3, "rq": [[0]] * 3}))
    with pytest.raises(DataError, match="item_id 1 appears more than once"):
        read_codes_table(tmp_path)
    write_parquet(path, pd.DataFrame({"item_id": [1, 2, 3], "vq": [[1, 2], [3], [4, 5]], "rq": [[0]] * 3}))
    with pytest.raises(DataError, match=r"row 1, column 'vq': code list has 1 entries"):
        read_codes_table(tmp_path)
    write_parquet(path, pd.DataFrame({"item_id": [1], "rq": [[0]]}))
    with pytest.raises(DataError, match="column 'vq'"):
        read_codes_table(tmp_path)
    write_parquet(path, pd.DataFrame({"item_id": np.array([3, 1, 2]), "vq": [[3], [1], [2]], "rq": [[30], [10], [20]]}))
    ids, vq, rq = read_codes_table(tmp_path)  # sorted on read, rows kept together
    assert ids.tolist() == [1, 2, 3] and vq[:, 0].tolist() == [1, 2, 3] and rq[:, 0].tolist() == [10, 20, 30]
