"""POST /items and DELETE /items/{id} on the live demo-fast server (in-memory item store): codes
stored, looked up and ranked; idempotent re-ingest; catalogue items protected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qarm.io import read_json, read_npy, read_parquet
from qarm.serve.kv import read_codes_table
from serve_helpers import item_body

NEW = 10**12  # ids far outside the demo catalogue


@pytest.fixture(scope="session")
def items(served_run):
    return read_parquet(served_run / "items.parquet")


def _user_history(run: Path) -> tuple[int, list[int]]:
    events = read_parquet(run / "events.parquet")
    train = events[events["split"] == "train"]
    user = int(train["user_id"].value_counts().index[0])
    return user, train[train["user_id"] == user].sort_values("timestamp", kind="stable")["item_id"].tolist()[-30:]


def test_ingest_then_lookup_rank_reingest_delete(server, served_run, items, media_root):
    from qarm.rank.predict import ItemContent, load_ranker

    src = items.sample(3, random_state=5)
    ids = [NEW + j for j in range(3)]
    bodies = [item_body(row, i, media_root) for row, i in zip(src.itertuples(), ids)]
    try:
        r = server.client.post("/items", json={"items": bodies})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["version"] == server.client.get("/health").json()["version"]
        got = {g["item_id"]: g for g in out["items"]}
        assert [g["item_id"] for g in out["items"]] == ids
        assert not any(g["replaced"] or g["catalogue"] for g in out["items"])
        cat_ids, _, cat_rq = read_codes_table(served_run)
        for i, row in zip(ids, src.itertuples()):  # the same content as a catalogue item: its RQ codes
            assert got[i]["rq"] == cat_rq[np.searchsorted(cat_ids, row.item_id)].tolist()
            assert server.client.get(f"/items/{i}/codes").json() == {"item_id": i, "vq": got[i]["vq"],
                                                                     "rq": got[i]["rq"]}
        assert server.client.get("/health").json()["n_ingested"] >= 3

        # rank: new ids as candidates and in the history, scored as the ranker scores new items in-process
        user, history = _user_history(served_run)
        history = history + [ids[2]]
        candidates = [ids[0], ids[1]] + items["item_id"].sample(20, random_state=2).tolist()
        pos = {int(v): k for k, v in enumerate(items["item_id"])}
        dense = {name: read_npy(served_run / name) for name in ("emb_aligned.npy", "emb_raw.npy")}
        variants = read_json(served_run / "rank" / "summary.json")["variants"]
        for variant in variants:
            r = server.client.post("/rank", json={"user_id": user, "history": history, "candidates": candidates,
                                                  "variant": variant})
            assert r.status_code == 200, r.text
            res = r.json()
            assert [c["item_id"] for c in res["items"]] == candidates
            extra = {i: ItemContent(vq=got[i]["vq"], rq=got[i]["rq"],
                                    dense={k: v[pos[int(row.item_id)]] for k, v in dense.items()})
                     for i, row in zip(ids, src.itertuples())}
            want = load_ranker(served_run, variant).score(history, candidates, user, extra_items=extra)
            for task in res["tasks"]:
                np.testing.assert_allclose([c["scores"][task] for c in res["items"]], want[task], atol=1e-5,
                                           err_msg=f"{variant}/{task}")

        # idempotent: the same content again gives the same codes and says it replaced the entry
        again = server.client.post("/items", json={"items": bodies})
        assert again.status_code == 200
        assert [(g["vq"], g["rq"]) for g in again.json()["items"]] == [(got[i]["vq"], got[i]["rq"]) for i in ids]
        assert all(g["replaced"] for g in again.json()["items"])
    finally:
        deleted = [server.client.delete(f"/items/{i}") for i in ids]
    assert all(d.status_code == 200 and d.json() == {"item_id": i, "deleted": True, "catalogue": False}
               for d, i in zip(deleted, ids))
    assert server.client.get(f"/items/{ids[0]}/codes").status_code == 404
    r = server.client.post("/rank", json={"candidates": [ids[0], int(items["item_id"].iloc[0])]})
    assert r.status_code == 404 and str(ids[0]) in r.json()["detail"] and "nor ingested" in r.json()["detail"]
    assert server.client.delete(f"/items/{ids[0]}").status_code == 404


def test_catalogue_items_are_overwritten_only_when_asked(server, served_run, items, media_root):
    row = next(items.sample(1, random_state=9).itertuples())
    cid = int(row.item_id)
    cat_ids, cat_vq, cat_rq = read_codes_table(served_run)
    k = int(np.searchsorted(cat_ids, cid))
    body = {"items": [item_body(row, cid, media_root)]}
    r = server.client.post("/items", json=body)
    assert r.status_code == 409 and str(cid) in r.json()["detail"] and '"overwrite": true' in r.json()["detail"]
    assert server.client.delete(f"/items/{cid}").status_code == 409  # nothing ingested: catalogue stays
    try:
        r = server.client.post("/items", json={**body, "overwrite": True})
        assert r.status_code == 200, r.text
        g = r.json()["items"][0]
        assert g["catalogue"] is True
        # sent with its own id, the item skips itself in VQ as at quantize time: its catalogue codes
        assert (g["vq"], g["rq"]) == (cat_vq[k].tolist(), cat_rq[k].tolist())
        assert server.client.post("/rank", json={"candidates": [cid]}).status_code == 200
    finally:
        d = server.client.delete(f"/items/{cid}")
    assert d.status_code == 200 and d.json()["catalogue"] is True
    assert server.client.get(f"/items/{cid}/codes").json()["vq"] == cat_vq[k].tolist()
    r = server.client.delete(f"/items/{cid}")
    assert r.status_code == 409 and "cannot be deleted" in r.json()["detail"]


@pytest.mark.parametrize("body, status, words", [
    ({"items": [{"title": "no id"}]}, 422, "has no item_id"),
    ({"items": [{"item_id": NEW, "title": "a"}, {"item_id": NEW, "title": "b"}]}, 422, "more than once"),
    ({"items": [{"item_id": NEW, "title": "a"}], "overwrite": "yes"}, 422, "overwrite"),
    ({"items": [{"item_id": NEW}]}, 422, "no content"),
    ({"items": [{"item_id": NEW, "title": "a", "image_path": "../../etc/passwd"}]}, 403, "outside the media root"),
    ({"items": []}, 422, "at least 1"),
])
def test_bad_ingest_requests(server, body, status, words):
    r = server.client.post("/items", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert server.client.get(f"/items/{NEW}/codes").status_code == 404  # nothing was stored


def test_delete_bad_ids(server):
    assert server.client.delete("/items/abc").status_code == 422
    assert server.client.delete(f"/items/{2**64}").status_code == 422
