"""The writable item store (memory, SQLite, a real redis-server): exact round trips, atomic batches,
concurrent writers of one id, and an export that keeps the ingested items."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from qarm.serve.kv import CodeStoreError, export_codes
from qarm.serve.store import (MemoryItemStore, RedisItemStore, SqliteItemStore, StoredItem, codebook_version,
                              open_item_store)


def _item(item_id: int, seed: int, version: str = "v1") -> StoredItem:
    rng = np.random.default_rng(seed)
    return StoredItem(item_id, rng.integers(0, 400, 25).tolist(), rng.integers(0, 16, 3).tolist(), version,
                      "/runs/a", {"emb_aligned.npy": rng.standard_normal(64).astype(np.float32),
                                  "emb_raw.npy": rng.standard_normal(32).astype(np.float32)}, seed % 2 == 0, 1.5)


def _same(a: StoredItem, b: StoredItem) -> bool:
    return (a.item_id, a.vq, a.rq, a.version, a.run, a.catalogue) == (b.item_id, b.vq, b.rq, b.version, b.run,
                                                                      b.catalogue) \
        and a.dense.keys() == b.dense.keys() and all(np.array_equal(a.dense[k], b.dense[k]) for k in a.dense)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def item_store(request, tmp_path):
    if request.param == "memory":
        store = MemoryItemStore()
    elif request.param == "sqlite":
        db = tmp_path / "codes.db"
        import sqlite3

        sqlite3.connect(db).close()  # an empty file: the store creates its table
        store = open_item_store(f"sqlite:///{db}")
        assert isinstance(store, SqliteItemStore)
    else:
        redis_server = request.getfixturevalue("redis_server")
        store = open_item_store(redis_server.url)
        assert isinstance(store, RedisItemStore)
    yield store
    store.close()


def test_round_trip_replace_delete(item_store):
    a, b = _item(7, 1), _item(-3, 2)
    item_store.put_many([a, b])
    got = item_store.get_many([7, -3, 99])
    assert set(got) == {7, -3} and _same(got[7], a) and _same(got[-3], b)
    assert got[7].dense["emb_aligned.npy"].dtype == np.float32  # bit-exact floats, not JSON decimals
    assert len(item_store) == 2
    a2 = _item(7, 3)
    item_store.put_many([a2])  # re-ingest replaces
    assert _same(item_store.get_many([7])[7], a2) and len(item_store) == 2
    assert item_store.delete(7) is True and item_store.delete(7) is False
    assert item_store.get_many([7]) == {} and len(item_store) == 1
    assert item_store.get_many([]) == {}


def test_concurrent_writers_of_one_id_never_mix(item_store):
    """Eight threads write two different items under one id; every read sees one of them whole."""
    versions = [_item(5, 10), _item(5, 11)]
    stop = threading.Event()
    seen: list[StoredItem] = []

    def writer(k: int) -> None:
        for n in range(40):
            item_store.put_many([versions[(k + n) % 2], _item(1000 + k, k)])

    def reader() -> None:
        while not stop.is_set():
            got = item_store.get_many([5]).get(5)
            if got is not None:
                seen.append(got)

    r = threading.Thread(target=reader)
    r.start()
    writers = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    r.join()
    final = item_store.get_many([5])[5]
    assert any(_same(final, v) for v in versions)
    assert seen and all(any(_same(s, v) for v in versions) for s in seen)
    assert len(item_store) == 9
    item_store.put_many([versions[0]])  # sequential writes: the last one wins
    item_store.put_many([versions[1]])
    assert _same(item_store.get_many([5])[5], versions[1])


def test_redis_outage_and_recovery_without_reconnecting(redis_server):
    store = RedisItemStore(redis_server.url)
    store.put_many([_item(1, 1)])
    redis_server.stop()
    with pytest.raises(CodeStoreError, match="write failed, nothing written"):
        store.put_many([_item(2, 2), _item(3, 3)])
    with pytest.raises(CodeStoreError, match="cannot read"):
        store.get_many([1])
    redis_server.start()  # same port and data directory; the data persisted through the AOF
    assert set(store.get_many([1, 2, 3])) == {1}  # the failed batch left nothing behind
    store.put_many([_item(2, 2)])  # the same client object works again
    assert set(store.get_many([1, 2, 3])) == {1, 2}
    store.close()


def test_corrupt_entries_are_named(redis_server):
    store = RedisItemStore(redis_server.url)
    store.client_.set("qarm:items:4", b"{not json")
    with pytest.raises(Exception, match="qarm:items:4"):
        store.get_many([4])
    store.close()


def test_sqlite_export_keeps_ingested_items_and_records_the_version(lookup_run, tmp_path):
    url = f"sqlite:///{tmp_path / 'codes.db'}"
    export_codes(lookup_run, url)
    store = open_item_store(url)
    store.put_many([_item(123456789, 4)])
    store.close()
    export_codes(lookup_run, url)  # a new export replaces the catalogue, not the ingested items
    store = open_item_store(url)
    assert _same(store.get_many([123456789])[123456789], _item(123456789, 4))
    store.close()
    from qarm.serve.kv import SqliteCodeStore

    assert SqliteCodeStore(tmp_path / "codes.db").meta["version"] == codebook_version(lookup_run)


def test_codebook_version_follows_encoder_and_codebooks(served_run, lookup_run):
    v = codebook_version(served_run)
    assert len(v) == 16 and v == codebook_version(served_run)
    assert codebook_version(lookup_run) != v  # a lookup-only folder is versioned by its codes table


def test_serve_device_is_checked(tmp_path):
    import json

    from qarm.errors import ConfigError
    from qarm.serve.service import load_serve_config

    (tmp_path / "config.json").write_text(json.dumps({"serve": {"device": "cpu"}}))
    assert load_serve_config(tmp_path).device == "cpu"
    (tmp_path / "config.json").write_text(json.dumps({"serve": {"device": "gpu0"}}))
    with pytest.raises(ConfigError, match="serve.device"):
        load_serve_config(tmp_path)
