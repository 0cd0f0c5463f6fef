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
    shared_codes,
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
    sims = ev.sim("sim")
    for e in rng.choice(len(ev), 40, replace=False):
        t_e = events.loc[events["split"].isin(["train", "valid", "test", "cold_test"]), "timestamp"].to_numpy()[e]
        ref = brute_history(users, ts, rows, pos, ev.user_id[e], t_e, 50)
        assert ev.history[e][ev.history[e] > 0].tolist() == ref
        sim = sims[e][sims[e] > 0]
        assert (t.rq[sim, 0] == t.rq[ev.target[e], 0]).all()
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


def test_shared_codes_equal_the_pairwise_comparison():
    rng = np.random.default_rng(0)
    vq = rng.integers(0, 40, size=(300, 6))
    vq[:2] = -1                      # PAD / UNKNOWN rows
    vq[5, :2] = 7                    # a code listed twice counts twice, as pairwise equality does
    target = np.r_[rng.integers(0, 300, 50), np.full(20, 5), [0, 1]]    # repeated and unknown targets
    hist = rng.integers(0, 300, size=(len(target), 9))
    hist[:, -2:] = 0                 # PAD slots
    vt, vh = vq[target], vq[hist]
    vt = np.where(vt < 0, -2, vt)
    want = (vh[:, :, :, None] == vt[:, None, None, :]).sum((2, 3))
    np.testing.assert_array_equal(shared_codes(vq, target, hist), want)
    # one event alone gets the same counts as in the batch (serving = training)
    np.testing.assert_array_equal(shared_codes(vq, target[3:4], hist[3:4]), want[3:4])
    assert shared_codes(vq, target[:0], hist[:0]).shape == (0, 9)


def test_variants_are_feature_lists(built):
    *_, t, _, _ = built
    names = {v: [s.name for s in variant_specs(v, t, 100, 50, 20, 16, 8, 4)] for v in
             ("id", "frozen_mm", "ia_rep", "vq", "rq", "qarm", "qarm_dense", "qarm_raw")}
    assert names["id"] == ["user_id", "item_id", "history"]
    # dense variants: the same skeleton as the code ones (item-table entry, SIM, match counts)
    assert set(names["frozen_mm"]) == {"user_id", "item_id", "history", "emb_raw.npy", "sim_raw",
                                       "cos_match_1_raw", "cos_match_2_raw", "cos_match_3_raw"}
    assert set(names["ia_rep"]) == {n.replace("raw", "aligned") for n in names["frozen_mm"]}
    assert "vq" in names["vq"] and "rq_l1" not in names["vq"]
    assert {"rq_l1", "rq_p2", "rq_p3", "rq_match_1", "sim"} <= set(names["rq"]) and "vq" not in names["rq"]
    assert set(names["qarm"]) == set(names["vq"]) | set(names["rq"])
    assert set(names["qarm_dense"]) == set(names["qarm"]) | (set(names["ia_rep"]) - {"sim_aligned"})
    # the codes beside the raw vector: SIM groups by the level-1 code, as in every code variant
    assert set(names["qarm_raw"]) == set(names["qarm"]) | (set(names["frozen_mm"]) - {"sim_raw"})


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
    assert ev.hist.values.dtype == np.int32 and ev.hist.start.dtype == np.int32  # they fit
    assert info["n_events"] == len(ev) == int(pd.Series(events["split"]).isin(
        ["train", "valid", "test", "cold_test"]).sum())


def _dense_reference_history(groups, ts, rows, positive, n):
    """The former dense construction, written independently: per user, positives in time order
    (stable), and for each event the last ``n`` strictly earlier ones, right-aligned."""
    out = np.zeros((len(groups), n), np.int64)
    for g in np.unique(groups):
        ev = np.flatnonzero(groups == g)
        pos = ev[positive[ev]]
        pos = pos[np.argsort(ts[pos], kind="stable")]
        before = np.searchsorted(ts[pos], ts[ev], side="left")
        for e, b in zip(ev, before):
            last = rows[pos[max(0, b - n):b]]
            out[e, n - len(last):] = last
    return out


def test_csr_histories_equal_the_dense_ones_on_ml100k(built):
    """Every event's history, materialised from CSR offsets (numpy and the per-batch torch path),
    equals the dense [E, 50] matrix the ranker used to hold."""
    import torch

    from qarm.rank.train import TensorData

    _, events, _, t, ev, _ = built
    src = events[events["split"].isin(["train", "valid", "test", "cold_test"])]
    groups = src["user_id"].to_numpy()
    positive = src["split"].isin(["train", "valid", "test"]).to_numpy() & (src["click"].to_numpy() == 1)
    ref = _dense_reference_history(groups, src["timestamp"].to_numpy(), t.rows(src["item_id"].to_numpy()), positive, 50)
    assert np.array_equal(ev.history, ref)
    specs = variant_specs("qarm", t, 100, 50, 20, 16, 8, 4)
    data = TensorData(ev, specs)
    idx = torch.as_tensor(np.random.default_rng(3).permutation(len(ev))[:5000])
    b = data.batch(idx)
    assert torch.equal(b["history"], torch.as_tensor(ref[idx.numpy()]))
    assert torch.equal(b["sim"], torch.as_tensor(ev.sim("sim")[idx.numpy()]))


def test_new_items_through_append_get_the_catalogue_compaction(built):
    """An item given by content gets the same indices as the catalogue row with those codes, and
    an OOV id; codes no training item uses become UNKNOWN."""
    items, _, codes, t, _, _ = built
    c = codes.sort_values("item_id").reset_index(drop=True)
    r = 10
    vq, rq = np.stack(c["vq"])[[r]], np.stack(c["rq"])[[r]]
    dense = {n: t.dense[n][[r + 2]] for n in t.dense}
    local = t.take(np.array([r + 2, 5])).append(vq, rq, dense)
    for name in t.index:
        want = t.index[name][r + 2] if name != "item_id" else [UNKNOWN]
        assert np.array_equal(local.index[name][4], want), name
        assert np.array_equal(local.index[name][2], t.index[name][r + 2])
    for name in t.cluster:
        assert local.cluster[name][4] == t.cluster[name][r + 2]
    unseen = np.full_like(rq, 2 ** t.rq_bits - 1)
    unseen[0, 0] = rq[0, 0]
    extra = t.append(np.full_like(vq, 10 ** 6), unseen, dense)
    assert (extra.index["vq"][-1] == UNKNOWN).all()
    assert extra.index["rq_l1"][-1, 0] == t.index["rq_l1"][r + 2, 0] and extra.index["rq_p3"][-1, 0] == UNKNOWN


def test_vq_table_item_id_reads_the_nearest_items_id_rows(ml_run, built):
    """``rank.vq_table: item_id``: VQ code c is pool item c's row of the item-id table (PAD for a
    pool item without train events), the model has no VQ table of its own, and a cold item's bag
    sends its gradient to its neighbours' id rows; a new item through ``append`` gets the same."""
    import torch

    from qarm.rank.model import RankModel

    items, _, codes, _, _, _ = built
    pool = read_npy(ml_run / "quant" / "vq_pool_ids.npy")
    dense = {n: read_npy(ml_run / n) for n in ("emb_raw.npy", "emb_aligned.npy")}
    t = build_item_tables(items, codes, dense, vq_pool_ids=pool)
    vq = t.vq[2:]
    want = t.index["item_id"][t.rows(pool[vq.ravel()]), 0].reshape(vq.shape)
    want[want == UNKNOWN] = 0
    assert np.array_equal(t.index["vq_item"][2:], want)
    assert (t.index["vq_item"][:2] == 0).all()
    held = np.flatnonzero(items["holdout"].to_numpy())
    assert (t.index["vq_item"][held + 2] >= 2).mean() > 0.5  # a cold item's bag: trained neighbours
    specs = variant_specs("qarm", t, 100, 50, 20, 16, 8, 4, vq_table="item_id")
    bag = next(s for s in specs if s.name == "vq_item")
    assert bag.table == "item_id" and bag.vocab == t.vocab["item_id"] and "vq" not in {s.name for s in specs}
    with pytest.raises(Exception, match="vq_table"):
        variant_specs("qarm", t, 100, 50, 20, 16, 8, 4, vq_table="shared")
    model = RankModel(specs, t, 1, [8], [8])
    assert "vq_item" not in model.item and "vq" not in model.item
    row = int(held[0]) + 2
    feats = model.row_features(torch.tensor([row]))
    model.item_vectors(feats).sum().backward()
    grad = model.item["item_id"].weight.grad.abs().sum(1)
    touched = np.unique(t.index["vq_item"][row][t.index["vq_item"][row] > 0])
    assert (grad[touched] > 0).all() and int((grad > 0).sum()) == len(touched) + 1  # + the OOV id row
    local = t.take(np.array([5])).append(vq[[held[0]]], t.rq[[row]], {n: t.dense[n][[row]] for n in t.dense})
    assert np.array_equal(local.index["vq_item"][-1], t.index["vq_item"][row])


def test_sim_depth_groups_the_hard_search_by_a_deeper_prefix(built):
    """``rank.sim_depth: 2``: every SIM item shares the target's first two RQ codes; the depth
    survives the model.pt round trip (serving groups as training did); a depth beyond the levels
    is a config error."""
    from qarm.config import ConfigError
    from qarm.rank.predict import tables_from_state
    from qarm.rank.stage import tables_state

    items, events, codes, shallow, ev1, _ = built
    t = build_item_tables(items, codes, {}, sim_depth=2)
    ev, _ = build_events(t, events, ["click"], "click", 50, 20)
    sims, sims1 = ev.sim("sim"), ev1.sim("sim")
    rows = np.flatnonzero((sims > 0).any(1))
    assert len(rows) > 100
    for e in rows[:: max(1, len(rows) // 200)]:
        s = sims[e][sims[e] > 0]
        assert (t.rq[s, :2] == t.rq[ev.target[e], :2]).all()
    # narrower groups: fewer SIM items than by the level-1 code alone
    assert (sims > 0).sum() < (sims1 > 0).sum()
    assert tables_from_state(tables_state(t)).sim_depth == 2 and t.take(np.array([5])).sim_depth == 2
    with pytest.raises(ConfigError, match="sim_depth"):
        build_item_tables(items, codes, {}, sim_depth=4)


def test_code_content_is_asked_for_and_checked(built, ml_run):
    """``variant_specs(code_content=True)`` needs tables built with the codes' embedding; the
    embedding must have one finite row per item; a local serving table keeps the vectors."""
    items, _, codes, t, _, _ = built
    with pytest.raises(DataError, match="rank.code_content needs the codes' content vectors for 'vq'"):
        variant_specs("qarm", t, 100, 50, 20, 16, 8, 4, code_content=True)
    emb = np.ones((len(items), 3), np.float32)
    with_content = build_item_tables(items, codes, {}, code_content=emb)
    specs = variant_specs("qarm", with_content, 100, 50, 20, 16, 8, 4, code_content=True)
    assert {s.name: s.content for s in specs if s.kind == "item"} == {
        "item_id": 0, "vq": 3, "rq_l1": 3, "rq_l2": 3, "rq_l3": 3, "rq_p2": 3, "rq_p3": 3}
    # every trained code's members all hold the ones row, so its mean is 1; PAD / OOV stay 0
    assert (with_content.content["vq"][2:] == 1).all() and not with_content.content["vq"][:2].any()
    assert with_content.take(np.array([3])).content is with_content.content
    # the VQ bag through the item-id table (rank.vq_table: item_id) has no content of its own
    pool = read_npy(ml_run / "quant" / "vq_pool_ids.npy")
    both = build_item_tables(items, codes, {}, vq_pool_ids=pool, code_content=emb)
    assert "vq_item" in both.index and set(both.content) == set(with_content.content)
    with pytest.raises(DataError, match=r"code content: expected float32 \[\d+, d\]"):
        build_item_tables(items, codes, {}, code_content=emb[1:])
    emb[4, 1] = np.nan
    with pytest.raises(DataError, match="code content: row\\(s\\) hold NaN or inf, first item_id"):
        build_item_tables(items, codes, {}, code_content=emb)
