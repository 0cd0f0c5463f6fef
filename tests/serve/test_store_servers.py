"""Servers reading codes from SQLite and from a real redis-server, over a lookup-only run folder."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from qarm.serve.kv import read_codes_table
from serve_helpers import Server


def _check_lookups(srv, run, n: int = 40) -> None:
    ids, vq, rq = read_codes_table(run)
    for i in np.random.default_rng(1).choice(len(ids), n, replace=False):
        assert srv.client.get(f"/items/{ids[i]}/codes").json() == {
            "item_id": int(ids[i]), "vq": vq[i].tolist(), "rq": rq[i].tolist()}
    r = srv.client.get(f"/items/{int(ids.max()) + 1}/codes")
    assert r.status_code == 404 and srv.client.get("/health").json()["n_codes"] == len(ids)


def test_sqlite_backed_server(lookup_run, tmp_path):
    url = f"sqlite:///{tmp_path / 'codes.db'}"
    subprocess.run([sys.executable, "-m", "qarm", "export-codes", "--run", str(lookup_run), "--to", url],
                   check=True, capture_output=True, timeout=60)
    srv = Server(lookup_run, tmp_path / "server.log", "--codes", url)
    try:
        _check_lookups(srv, lookup_run)
        assert srv.client.get("/health").json()["codes_store"] == url
        # this run has no encoder and no ranker: the endpoints say which stage is missing
        r = srv.client.post("/items/codes", json={"items": [{"title": "x"}]})
        assert r.status_code == 503 and "'align' stage has not run" in r.json()["detail"]
        r = srv.client.post("/rank", json={"candidates": [int(read_codes_table(lookup_run)[0][0])]})
        assert r.status_code == 503 and "'train' stage has not run" in r.json()["detail"]
    finally:
        srv.stop()


def test_redis_backed_server_and_redis_outage(lookup_run, redis_server, tmp_path):
    subprocess.run([sys.executable, "-m", "qarm", "export-codes", "--run", str(lookup_run),
                    "--to", redis_server.url], check=True, capture_output=True, timeout=60)
    srv = Server(lookup_run, tmp_path / "server.log", "--codes", redis_server.url)
    try:
        _check_lookups(srv, lookup_run)
        redis_server.stop()  # the store goes away under a running server: 503, never a 500
        ids = read_codes_table(lookup_run)[0]
        r = srv.client.get(f"/items/{ids[0]}/codes")
        assert r.status_code == 503 and "code store unavailable" in r.json()["detail"]
        assert srv.client.get("/health").status_code == 200
    finally:
        srv.stop()


def test_server_refuses_to_start_on_a_bad_store(lookup_run):
    out = subprocess.run([sys.executable, "-m", "qarm", "serve", "--run", str(lookup_run), "--port", "1",
                          "--codes", "redis://127.0.0.1:1/0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot read from Redis" in out.stderr and "Traceback" not in out.stderr
