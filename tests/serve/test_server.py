"""The real server in a subprocess over a demo-fast run: lookup, cold-start codes, ranking."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pytest

from qarm.io import read_json, read_parquet
from qarm.serve.kv import read_codes_table


@pytest.fixture(scope="session")
def items(served_run):
    return read_parquet(served_run / "items.parquet")


def _item_body(row, media: str, media_root: Path, with_text: bool = True) -> dict:
    body = {"item_id": int(row.item_id), "title": row.title, "description": row.description,
            "tags": row.tags, "category": row.category}
    if with_text:
        body["text"] = row.text
    for kind in ("image", "audio"):
        path = getattr(row, kind)
        if path is None:
            continue
        if media == "b64":
            body[f"{kind}_b64"] = base64.b64encode(Path(path).read_bytes()).decode()
        else:
            body[f"{kind}_path"] = os.path.relpath(path, media_root)
    return body


def test_health_and_code_lookup(server, served_run):
    health = server.client.get("/health").json()
    assert health["status"] == "ok" and health["encoder"] is True and health["rankers"]
    ids, vq, rq = read_codes_table(served_run)
    assert health["n_codes"] == len(ids)
    for i in np.random.default_rng(0).choice(len(ids), 25, replace=False):
        r = server.client.get(f"/items/{ids[i]}/codes")
        assert r.status_code == 200
        assert r.json() == {"item_id": int(ids[i]), "vq": vq[i].tolist(), "rq": rq[i].tolist()}
    missing = int(ids.max()) + 12345
    r = server.client.get(f"/items/{missing}/codes")
    assert r.status_code == 404 and f"item {missing} has no codes" in r.json()["detail"]


def test_new_items_get_the_codes_of_their_content(server, served_run, items, media_root):
    """Catalogue items sent as new content get back the codes quantize gave them (cold-start path)."""
    ids, vq, rq = read_codes_table(served_run)
    batch = items.sample(8, random_state=0)  # small: the image tower is the slow part on a CPU
    sent = [_item_body(row, "b64", media_root) for row in batch.itertuples()]
    assert sum("image_b64" in b for b in sent) >= 6
    r = server.client.post("/items/codes", json={"items": sent})
    assert r.status_code == 200, r.text
    got = r.json()["items"]
    assert [g["item_id"] for g in got] == batch["item_id"].tolist()
    pos = np.searchsorted(ids, batch["item_id"].to_numpy())
    # an item sent with its catalogue id skips itself in VQ, as at quantize time: the codes match exactly
    rq_same = np.mean([g["rq"] == rq[p].tolist() for g, p in zip(got, pos)])
    vq_same = np.mean([g["vq"] == vq[p].tolist() for g, p in zip(got, pos)])
    assert rq_same >= 7 / 8 and vq_same >= 7 / 8, (rq_same, vq_same)
    assert all(len(g["vq"]) == vq.shape[1] and len(g["rq"]) == rq.shape[1] for g in got)

    # the same media by path under the media root, in reverse order: the same codes, in request order
    by_path = [_item_body(row, "path", media_root) for row in batch.itertuples()][::-1]
    r2 = server.client.post("/items/codes", json={"items": by_path})
    assert r2.status_code == 200, r2.text
    assert r2.json()["items"][::-1] == got

    # without ids the items are strangers to the pool: same RQ; VQ may now include the item itself
    for b in by_path:
        b.pop("item_id")
    r3 = server.client.post("/items/codes", json={"items": by_path})
    back = r3.json()["items"][::-1]
    assert all(b["item_id"] is None for b in back)
    assert [b["rq"] for b in back] == [g["rq"] for g in got]
    assert all(len(set(b["vq"]) & set(g["vq"])) >= vq.shape[1] - 1 for b, g in zip(back, got))

    # text fields only (text composed by the server), one item per request: a valid answer each time
    one = _item_body(next(batch.itertuples()), "none", media_root, with_text=False)
    r4 = server.client.post("/items/codes", json={"items": [one]})
    assert r4.status_code == 200 and len(r4.json()["items"][0]["rq"]) == rq.shape[1]


def test_rank_scores_candidates_per_task(server, served_run, items):
    from qarm.rank.predict import load_ranker

    events = read_parquet(served_run / "events.parquet")
    train = events[events["split"] == "train"]
    user = int(train["user_id"].value_counts().index[0])
    history = train[train["user_id"] == user].sort_values("timestamp")["item_id"].tolist()[-50:]
    candidates = items["item_id"].sample(100, random_state=1).tolist()
    body = {"user_id": user, "history": history, "candidates": candidates}
    r = server.client.post("/rank", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    tasks = read_json(served_run / "config.json")["rank"]["tasks"]
    assert out["tasks"] == tasks
    assert [c["item_id"] for c in out["items"]] == candidates
    scores = {t: np.array([c["scores"][t] for c in out["items"]]) for t in tasks}
    assert all(((s > 0) & (s < 1)).all() and s.std() > 0 for s in scores.values())
    expected = load_ranker(served_run, None).score(history, candidates, user)
    for t in tasks:
        np.testing.assert_allclose(scores[t], expected[t], rtol=1e-5, atol=1e-6)
    assert server.client.post("/rank", json=body).json() == out  # deterministic
