"""Offline/online parity on the reduced real ml-100k run: the live server's score for (user, history,
candidate) equals the train stage's prediction in predictions.parquet to 1e-6, for warm test events
and for held-out cold items ingested by content through POST /items (every trained variant)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qarm.io import read_json, read_parquet
from qarm.rank.features import EVENT_SPLITS, HISTORY_SPLITS
from qarm.serve.kv import read_codes_table
from serve_helpers import Server, item_body

pytestmark = pytest.mark.slow
N_COLD_ITEMS = 4      # held-out items ingested by content
N_WARM_EVENTS = 40    # test events of catalogue items


@pytest.fixture(scope="session")
def ml100k_run(pipeline_run, ml100k_path) -> Path:
    """ml100k-fast through train (the run test_end_to_end builds); ``QARM_SERVE_ML100K_RUN=DIR`` reuses one."""
    if os.environ.get("QARM_SERVE_ML100K_RUN"):
        return Path(os.environ["QARM_SERVE_ML100K_RUN"])
    return pipeline_run("ml100k-fast", ["prepare", "pairs", "align", "quantize", "train"])


@pytest.fixture(scope="session")
def ml100k_server(ml100k_run, tmp_path_factory):
    items = read_parquet(ml100k_run / "items.parquet", columns=["image"])
    root = os.path.commonpath(items["image"].dropna().tolist())
    srv = Server(ml100k_run, tmp_path_factory.mktemp("ml100k-server") / "server.log", "--media-root", root,
                 timeout=300)
    srv.media_root = Path(root)
    yield srv
    srv.stop()


def offline_histories(run: Path, queries: pd.DataFrame, label: str) -> list[list[int]]:
    """For each (user_id, timestamp) query: the user's positives (``label`` == 1, history splits)
    strictly before it, oldest first, ties in events.parquet order: what offline evaluation reads."""
    events = read_parquet(run / "events.parquet")
    ev = events[events["split"].isin(EVENT_SPLITS)]
    pos = ev[ev["split"].isin(HISTORY_SPLITS) & (ev[label] == 1)]
    pos = pos.sort_values(["user_id", "timestamp"], kind="stable")
    by_user = {u: (g["timestamp"].to_numpy(), g["item_id"].tolist()) for u, g in pos.groupby("user_id")}
    out = []
    for u, t in zip(queries["user_id"], queries["timestamp"]):
        ts, its = by_user.get(u, (np.zeros(0, np.int64), []))
        out.append(its[: int(np.searchsorted(ts, t, side="left"))])
    return out


def _events_with_predictions(run: Path, variant: str, seed: int) -> pd.DataFrame:
    pred = read_parquet(run / "rank" / variant / f"seed{seed}" / "predictions.parquet")
    ev = read_parquet(run / "events.parquet", columns=["user_id", "item_id", "timestamp"])
    out = pred.merge(ev, on=["user_id", "item_id"], how="left", validate="one_to_one")  # ml-100k: one rating per pair
    assert out["timestamp"].notna().all()
    return out


def _check(server, run: Path, events: pd.DataFrame, variants: list[str], seed: int, tasks: list[str],
           label: str) -> int:
    """Score ``events`` (one /rank per user and timestamp) with every variant; compare to predictions."""
    groups = events.groupby(["user_id", "timestamp"], sort=True)
    keys = pd.DataFrame(list(groups.groups), columns=["user_id", "timestamp"])
    hists = offline_histories(run, keys, label)
    n = 0
    for variant in variants:
        pred = _events_with_predictions(run, variant, seed).set_index(["user_id", "item_id"])
        for (user, _), hist in zip(groups.groups, hists):
            cands = events[(events["user_id"] == user) & (events["timestamp"] == _)]["item_id"].tolist()
            r = server.client.post("/rank", json={"user_id": int(user), "history": hist, "candidates": cands,
                                                  "variant": variant})
            assert r.status_code == 200, r.text
            for c in r.json()["items"]:
                want = pred.loc[(int(user), c["item_id"])]
                for task in tasks:
                    got = c["scores"][task]
                    assert abs(got - float(want[f"p_{task}"])) <= 1e-6, \
                        (variant, task, int(user), c["item_id"], got, float(want[f"p_{task}"]))
                n += 1
    return n


def test_warm_and_ingested_cold_items_score_as_offline(ml100k_server, ml100k_run):
    cfg = read_json(ml100k_run / "config.json")["rank"]
    summary = read_json(ml100k_run / "rank" / "summary.json")
    variants, seed, tasks, label = summary["variants"], summary["seed"], cfg["tasks"], cfg["history_label"]
    first = _events_with_predictions(ml100k_run, variants[0], seed)

    # warm: test events of catalogue items, as they are
    warm = first[first["split"] == "test"].sample(N_WARM_EVENTS, random_state=0)
    assert _check(ml100k_server, ml100k_run, warm, variants, seed, tasks, label) == N_WARM_EVENTS * len(variants)

    # cold: held-out items, ingested from their content (text, poster); they rank from their new entry
    items = read_parquet(ml100k_run / "items.parquet")
    cold_events = first[first["split"] == "cold_test"]
    busiest = cold_events["item_id"].value_counts().index[:N_COLD_ITEMS].tolist()
    rows = items.set_index("item_id").loc[busiest].reset_index()
    assert rows["holdout"].all()
    body = {"items": [item_body(r, int(r.item_id), ml100k_server.media_root) for r in rows.itertuples()],
            "overwrite": True}  # held-out items are in items.parquet: replacing their entry must be explicit
    r = ml100k_server.client.post("/items", json=body)
    assert r.status_code == 200, r.text
    got = r.json()["items"]
    assert all(g["catalogue"] for g in got)
    ids, vq, rq = read_codes_table(ml100k_run)
    k = np.searchsorted(ids, busiest)
    mismatched = [(g["item_id"], g["vq"] == vq[j].tolist(), g["rq"] == rq[j].tolist()) for g, j in zip(got, k)
                  if (g["vq"], g["rq"]) != (vq[j].tolist(), rq[j].tolist())]
    assert not mismatched, f"online codes differ from codes.parquet (item, vq same, rq same): {mismatched}"
    cold = cold_events[cold_events["item_id"].isin(busiest)]
    assert _check(ml100k_server, ml100k_run, cold, variants, seed, tasks, label) == len(cold) * len(variants)
    for i in busiest:
        assert ml100k_server.client.delete(f"/items/{i}").status_code == 200
