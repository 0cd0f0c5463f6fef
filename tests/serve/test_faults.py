"""Faults with a real redis-server under the full demo-fast server: Redis down during ingest (503,
nothing half-written), back up (ingest resumes, no restart), concurrent ingests of one id (last
write wins, never a mix of two items)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from qarm.io import read_parquet
from qarm.serve.store import RedisItemStore
from serve_helpers import Server, item_body

NEW = 2 * 10**12


@pytest.fixture
def redis_app(served_run, media_root, redis_server, tmp_path):
    subprocess.run([sys.executable, "-m", "qarm", "export-codes", "--run", str(served_run), "--to", redis_server.url],
                   check=True, capture_output=True, timeout=120)
    srv = Server(served_run, tmp_path / "server.log", "--codes", redis_server.url, "--media-root", str(media_root))
    yield srv
    srv.stop()


def _bodies(served_run, media_root, n: int, first_id: int, seed: int = 0) -> list[dict]:
    items = read_parquet(served_run / "items.parquet").sample(n, random_state=seed)
    return [item_body(row, first_id + j, media_root) for j, row in enumerate(items.itertuples())]


def test_redis_outage_during_ingest_and_recovery(redis_app, redis_server, served_run, media_root):
    before = _bodies(served_run, media_root, 2, NEW)
    assert redis_app.client.post("/items", json={"items": before}).status_code == 200
    batch = _bodies(served_run, media_root, 6, NEW + 100, seed=1)

    redis_server.stop()
    r = redis_app.client.post("/items", json={"items": batch})
    assert r.status_code == 503 and "code store unavailable" in r.json()["detail"], r.text
    assert redis_app.client.get("/health").status_code == 200
    assert redis_app.client.get("/health").json()["n_ingested"] is None  # the outage is reported, not hidden
    assert redis_app.client.post("/rank", json={"candidates": [NEW]}).status_code == 503

    # Redis dies while a batch is being encoded: the write fails as a whole
    redis_server.start()
    result: dict = {}
    big = _bodies(served_run, media_root, 48, NEW + 200, seed=2)
    t = threading.Thread(target=lambda: result.update(r=redis_app.client.post("/items", json={"items": big})))
    t.start()
    time.sleep(0.3)  # the store was read (ids before), the encoder is busy with 48 items
    redis_server.stop()
    t.join()
    assert result["r"].status_code == 503, result["r"].text

    redis_server.start()  # back up: the same server ingests again, no restart
    raw = RedisItemStore(redis_server.url)
    assert set(raw.get_many([b["item_id"] for b in batch + big])) == set()  # nothing half-written
    assert set(raw.get_many([b["item_id"] for b in before])) == {NEW, NEW + 1}  # earlier writes kept
    r = redis_app.client.post("/items", json={"items": batch})
    assert r.status_code == 200, r.text
    assert redis_app.client.get(f"/items/{NEW + 100}/codes").json()["vq"] == r.json()["items"][0]["vq"]
    assert redis_app.client.get("/health").json()["n_ingested"] == 2 + len(batch)
    assert "Traceback" not in redis_app.log_tail(200_000)
    raw.close()


def test_concurrent_ingests_of_one_id_last_write_wins(redis_app, redis_server, served_run, media_root):
    a, b = _bodies(served_run, media_root, 2, NEW + 500, seed=3)
    # the codes and vectors of each content on its own id, for reference
    ref = redis_app.client.post("/items", json={"items": [a, b]}).json()["items"]
    raw = RedisItemStore(redis_server.url)
    ref_entries = raw.get_many([a["item_id"], b["item_id"]])
    contents = [dict(a, item_id=NEW + 999), dict(b, item_id=NEW + 999)]
    statuses: list[int] = []

    def client(k: int) -> None:
        import httpx

        with httpx.Client(base_url=redis_app.url, timeout=120) as c:
            for n in range(4):
                statuses.append(c.post("/items", json={"items": [contents[(k + n) % 2]]}).status_code)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 16
    final = raw.get_many([NEW + 999])[NEW + 999]
    matches = [k for k, e in enumerate(ref_entries[i] for i in (a["item_id"], b["item_id"]))
               if (final.vq, final.rq) == (e.vq, e.rq)
               and all(np.array_equal(final.dense[n], e.dense[n]) for n in e.dense)]
    assert len(matches) >= 1, "the stored entry mixes two items"
    # sequential: the last write is what stays
    for body in contents:
        assert redis_app.client.post("/items", json={"items": [body]}).status_code == 200
    last = redis_app.client.get(f"/items/{NEW + 999}/codes").json()
    assert (last["vq"], last["rq"]) == (ref[1]["vq"], ref[1]["rq"])
    raw.close()
