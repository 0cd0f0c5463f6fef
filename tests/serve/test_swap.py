"""Hot swap under load: the admin endpoint (loopback listener), SIGHUP on a repointed symlink and
``qarm serve --run NEW --swap`` change the served run without a failed request; entries coded by
the other codebooks are refused until re-ingested."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from qarm.io import read_parquet
from qarm.serve.store import codebook_version
from serve_helpers import Server, free_port, item_body

pytestmark = pytest.mark.slow
NEW = 3 * 10**12


@pytest.fixture(scope="session")
def other_run(served_run, tmp_path_factory) -> Path:
    """``served_run`` with new codebooks (RQ 8x8x8) and a ranker retrained on them (variant vq only)."""
    from qarm.config import load_config
    from qarm.runner import run_stages

    out = tmp_path_factory.mktemp("other-run") / "run"
    shutil.copytree(served_run, out, ignore=shutil.ignore_patterns("rank", "quant", "codes.parquet"))
    cfg = load_config(Path(__file__).parents[1] / "configs" / "demo-fast.yaml",
                      ["quantize.rq_sizes=[8, 8, 8]", "rank.variants=[vq]"])
    run_stages(cfg, out, stages=["quantize", "train"])
    return out


class Load:
    """Two clients ranking and looking up catalogue items until stopped; every answer recorded."""

    def __init__(self, url: str, ids: np.ndarray) -> None:
        self.url, self.ids = url, ids
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,)) for k in range(2)]
        for t in self._threads:
            t.start()

    def _run(self, k: int) -> None:
        rng = np.random.default_rng(k)
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while not self._stop.is_set():
                try:
                    if k == 0:
                        r = c.post("/rank", json={"candidates": rng.choice(self.ids, 50, replace=False).tolist()})
                    else:
                        r = c.get(f"/items/{int(rng.choice(self.ids))}/codes")
                    self.statuses.append(r.status_code)
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def _wait_version(client: httpx.Client, version: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/health").json()["version"] != version:
        assert time.monotonic() < deadline, f"server still not on version {version}"
        time.sleep(0.2)


def test_hot_swap_under_load(served_run, other_run, media_root, tmp_path):
    va, vb = codebook_version(served_run), codebook_version(other_run)
    assert va != vb
    link = tmp_path / "current"
    link.symlink_to(served_run)
    admin_port = free_port()
    srv = Server(link, tmp_path / "server.log", "--media-root", str(media_root), "--admin-port", str(admin_port))
    admin = httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=300)
    items = read_parquet(served_run / "items.parquet")
    load = Load(srv.url, items["item_id"].to_numpy())
    try:
        x = item_body(next(items.sample(1, random_state=4).itertuples()), NEW, media_root)
        r = srv.client.post("/items", json={"items": [x]})
        assert r.status_code == 200 and r.json()["version"] == va
        x_codes = {k: r.json()["items"][0][k] for k in ("vq", "rq")}
        assert admin.get("/admin/status").json()["version"] == va
        assert srv.client.post("/admin/reload", json={}).status_code == 404  # not on the public listener

        r = admin.post("/admin/reload", json={"run": str(other_run)})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == vb and r.json()["previous_version"] == va
        assert srv.client.get("/health").json()["version"] == vb
        # X was coded by the old codebooks: refused, named, until re-ingested
        r = srv.client.get(f"/items/{NEW}/codes")
        assert r.status_code == 404 and va in r.json()["detail"] and "re-ingest" in r.json()["detail"]
        r = srv.client.post("/rank", json={"candidates": [NEW]})
        assert r.status_code == 404 and "other codebooks" in r.json()["detail"]

        # SIGHUP reloads --run: the symlink now points back at the first run
        link.unlink()
        link.symlink_to(served_run)
        srv.proc.send_signal(signal.SIGHUP)
        _wait_version(srv.client, va)
        back = srv.client.get(f"/items/{NEW}/codes")  # its own codebooks again: served as written
        assert back.status_code == 200 and {k: back.json()[k] for k in ("vq", "rq")} == x_codes

        # a run that does not load leaves the current one serving
        r = admin.post("/admin/reload", json={"run": str(tmp_path / "no-such-run")})
        assert r.status_code == 409 and "not swapped" in r.json()["detail"]
        assert srv.client.get("/health").json()["version"] == va

        # the command line: qarm serve --run NEW --swap --admin-port P
        out = subprocess.run([sys.executable, "-m", "qarm", "serve", "--run", str(other_run), "--swap",
                              "--admin-port", str(admin_port)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and f"codebook version {vb}" in out.stdout, out.stderr
        assert srv.client.get("/health").json()["version"] == vb
        time.sleep(0.5)
    finally:
        load.stop()
        admin.close()
        srv.stop()
    assert not load.errors, load.errors[:5]
    assert load.statuses and set(load.statuses) == {200}, {s: load.statuses.count(s) for s in set(load.statuses)}
    assert "Traceback" not in srv.log_tail(200_000)
