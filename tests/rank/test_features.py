"""Feature construction on the real ml-100k run: OOV ids, histories, SIM, code matches, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rank_helpers import brute_history

from qarm.errors import DataError
from qarm.io import read_npy, read_parquet
from qarm.rank.features import (
    UNKNOWN,
    build_events,
    build_item_tables,
    match_counts,
    variant_specs,
)


@pytest.fixture(scope="module")
def built(ml_run):
    items, events = read_parquet(ml_run / "items.parquet"), read_parquet(ml_run / "events.parquet")
    codes = read_parquet(ml_run / "codes.parquet")
    dense = {n: read_npy(ml_run / n) for n in ("emb_raw.npy", "emb_aligned.npy")}
    tables = build_item_tables(items, codes, dense)
    ev, info = build_events(tables, events, ["click", "like"], "click", 50, 20)
    return items, events, codes, tables, ev, info


def test_unseen_and_held_out_items_share_the_oov_id_but_keep_their_codes(built):
    items, _, _, t, ev, info = built
    ids = t.index["item_id"][2:, 0]
    trained = items["train_count"].to_numpy() > 0
    assert (ids[~trained] == UNKNOWN).all() and (ids[trained] >= 2).all()
    assert len(np.unique(ids[trained])) == trained.sum()
    held = items["holdout"].to_numpy()
    assert held.any() and (ids[held] == UNKNOWN).all()
    # held-out items keep a trained level-1 RQ code almost always: that is what lets codes generalise
    assert (t.index["rq_l1"][2:, 0][held] >= 2).mean() > 0.9
    cold = ev.split == "cold_test"
    assert cold.sum() > 0 and (t.index["item_id"][ev.target[cold], 0] == UNKNOWN).all()
    assert info["n_cold_test"] == cold.sum() and info["n_unknown_items"] == 0


def test_histories_are_the_last_positives_strictly_before_from_non_held_out_events(built):
    _, events, _, t, ev, _ = built
    src = events[events["split"].isin(["train", "valid", "test"])]
    users, ts = src["user_id"].to_numpy(), src["timestamp"].to_numpy()
    rows, pos = t.rows(src["item_id"].to_numpy()), src["click"].to_numpy() == 1
    rng = np.random.default_rng(0)
    for e in rng.choice(len(ev), 40, replace=False):
        t_e = events.loc[events["split"].isin(["train", "valid", "test", "cold_test"]), "timestamp"].to_numpy()[e]
        ref = brute_history(users, ts, rows, pos, ev.user_id[e], t_e, 50)
        assert ev.history[e][ev.history[e] > 0].tolist() == ref
        sim = ev.sim[e][ev.sim[e] > 0]
        assert (t.prefix[sim, 0] == t.prefix[ev.target[e], 0]).all()
        assert set(sim.tolist()) <= set(brute_history(users, ts, rows, pos, ev.user_id[e], t_e, 10 ** 6))


def test_code_match_counts_match_a_loop(built):
    _, _, codes, t, ev, _ = built
    sel = np.arange(0, len(ev), 997)
    got = match_counts(t, ev.target[sel], ev.history[sel])
    vq = {r + 2: set(v) for r, v in enumerate(codes.sort_values("item_id")["vq"])}
    rq = {r + 2: tuple(v) for r, v in enumerate(codes.sort_values("item_id")["rq"])}
    for k, e in enumerate(sel):
        hist = [h for h in ev.history[e] if h > 0]
        tg = ev.target[e]
        for d in (1, 2, 3):
            assert got[f"rq_match_{d}"][k] == sum(rq[h][:d] == rq[tg][:d] for h in hist)
        assert got["vq_overlap_items"][k] == sum(bool(vq[h] & vq[tg]) for h in hist)
        assert got["vq_overlap_codes"][k] == sum(len(vq[h] & vq[tg]) for h in hist)


def test_variants_are_feature_lists(built):
    *_, t, _, _ = built
    names = {v: [s.name for s in variant_specs(v, t, 100, 50, 20, 16, 8, 4)] for v in
             ("id", "frozen_mm", "ia_rep", "vq", "rq", "qarm")}
    assert names["id"] == ["user_id", "item_id", "history"]
    assert "emb_raw.npy" in names["frozen_mm"] and "emb_aligned.npy" in names["ia_rep"]
    assert "vq" in names["vq"] and "rq_l1" not in names["vq"]
    assert {"rq_l1", "rq_p2", "rq_p3", "rq_match_1", "sim"} <= set(names["rq"]) and "vq" not in names["rq"]
    assert set(names["qarm"]) == set(names["vq"]) | set(names["rq"])


def test_bad_labels_nan_embeddings_and_empty_histories(built):
    items, events, codes, t, ev, info = built
    bad = events.copy()
    bad.loc[123, "like"] = 2  # a train event: rows are checked before any is set aside
    with pytest.raises(DataError, match=r"events.parquet.*row 123.*'like'.*0 or 1"):
        build_events(t, bad, ["click", "like"], "click", 50, 20)
    with pytest.raises(DataError, match="not in events"):
        build_events(t, events, ["watch"], "click", 50, 20)
    raw = np.ones((len(items), 4), np.float32)
    raw[7, 2] = np.nan
    with pytest.raises(DataError, match=r"emb_raw.npy.*row 7.*NaN"):
        build_item_tables(items, codes, {"emb_raw.npy": raw})
    # empty histories are counted, not dropped: every user's first event has one
    assert info["n_empty_history"] > 0
    assert info["n_empty_history"] == int((ev.history.sum(1) == 0).sum())
    assert info["n_events"] == len(ev) == int(pd.Series(events["split"]).isin(
        ["train", "valid", "test", "cold_test"]).sum())
