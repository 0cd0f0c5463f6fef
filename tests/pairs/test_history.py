"""CSR histories on real ml-100k: the same windows, latest items, seen sets and triggers as the dense
[n, window] arrays the pairs stage built before, and blocked recall equal to the dense score matrix."""

import numpy as np
import pandas as pd
import pytest

from qarm.pairs.history import Histories, padded_windows, sort_by_user_time, window_bounds
from qarm.pairs.inputs import load_positives, read_events
from qarm.pairs.triggers import mine_triggers
from qarm.pairs.twotower import recall_at_k, recall_hits


@pytest.fixture(scope="module")
def ml_train(pipeline_run, ml100k_path):
    run = pipeline_run("ml100k-fast", ["prepare"])
    items = pd.read_parquet(run / "items.parquet")
    events = read_events(run / "events.parquet", "click")
    assert list(events.columns) == ["user_id", "item_id", "timestamp", "split", "click"]  # nothing else read
    train = load_positives(items, events, "click", "train", "items.parquet", "events.parquet")
    valid = load_positives(items, events, "click", "valid", "items.parquet", "events.parquet")
    assert len(train.user) > 30_000
    return items, train, valid


def dense_windows(user, item, time, window):
    """The previous layout: one int64 [n, window] row per sorted event."""
    order = sort_by_user_time(user, time)
    lo, hi = window_bounds(user[order], time[order], window)
    return order, padded_windows(item[order], lo, hi, window)


def test_csr_windows_equal_dense_on_ml100k(ml_train):
    _, train, _ = ml_train
    h = Histories.build(train.user, train.item, train.time, 50)
    assert h.indptr.dtype == np.int32 and h.lo.dtype == np.int32 and h.items.dtype == np.int32
    order, dense = dense_windows(train.user, train.item, train.time, 50)
    np.testing.assert_array_equal(h.order, order)
    rng = np.random.default_rng(0)
    for rows in (np.arange(len(h)), rng.permutation(len(h))[:512]):   # the whole log, and one shuffled batch
        np.testing.assert_array_equal(h.windows(rows), dense[rows])
    # CSR memory: 4-byte offsets and items instead of an 8-byte [n, 50] matrix
    csr_bytes = sum(a.nbytes for a in (h.indptr, h.items, h.lo, h.hi))
    assert csr_bytes * 20 < dense.nbytes


def test_latest_and_seen_equal_dense_lookup(ml_train):
    _, train, valid = ml_train
    users = np.unique(valid.user)
    h = Histories.build(train.user, train.item, train.time, 50)
    # the previous per-user dense lookup of the stage's recall evaluation
    by_user = np.lexsort((train.time, train.user))
    t_user, t_item = train.user[by_user], train.item[by_user]
    lo, hi = np.searchsorted(t_user, users, "left"), np.searchsorted(t_user, users, "right")
    old = np.full((len(users), 50), -1, dtype=np.int64)
    idx = hi[:, None] - 50 + np.arange(50)
    ok = idx >= np.maximum(lo, hi - 50)[:, None]
    old[ok] = t_item[idx[ok]]
    np.testing.assert_array_equal(h.latest(users), old)
    seen, indptr = h.seen(users)
    assert (hi == lo).sum() > 50                                  # many valid users are new: empty slices
    for k in range(len(users)):
        np.testing.assert_array_equal(seen[indptr[k]:indptr[k + 1]], t_item[lo[k]:hi[k]])


def test_csr_trigger_mining_equals_dense_on_ml100k(ml_train):
    """Exact (trigger, target) pairs: the CSR band kernel against argmax over dense [n, 50] windows."""
    items, train, _ = ml_train
    emb = np.random.default_rng(3).normal(size=(len(items), 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    trig, targ, score, event = mine_triggers(train.user, train.item, train.time, emb, 50, progress=False)
    order, dense = dense_windows(train.user, train.item, train.time, 50)
    target = train.item[order]
    sims = np.einsum("nwd,nd->nw", emb[np.maximum(dense, 0)], emb[target])
    sims[(dense < 0) | (dense == target[:, None])] = -np.inf
    best = sims.argmax(axis=1)
    found = np.isfinite(sims[np.arange(len(order)), best])
    back = np.argsort(order[found], kind="stable")
    np.testing.assert_array_equal(event, order[found][back])
    np.testing.assert_array_equal(targ, target[found][back])
    np.testing.assert_array_equal(trig, dense[found, best[found]][back])
    np.testing.assert_allclose(score, sims[found, best[found]][back], atol=1e-5)
    assert len(trig) > 0.95 * len(train.user)


@pytest.mark.parametrize("block", [1, 7, 4096])
def test_blocked_recall_equals_dense(block):
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(300, 120)).astype(np.float32)
    targets = rng.integers(0, 120, 300)
    seen = [rng.choice(120, rng.integers(0, 30), replace=False) for _ in range(300)]
    dense = recall_at_k(scores, targets, seen, (1, 10, 50))
    indptr = np.r_[0, np.cumsum([len(s) for s in seen])]
    hits = recall_hits(lambda rows: scores[rows], targets, np.concatenate(seen), indptr, (1, 10, 50), block)
    assert {k: v / 300 for k, v in hits.items()} == dense
    # the reference, row by row: the target is never excluded, seen items are
    expect = 0
    for s, t, e in zip(scores, targets, seen):
        s = s.copy()
        s[[i for i in e if i != t]] = -np.inf
        expect += int(t in np.argsort(-s, kind="stable")[:10])
    assert hits[10] == expect


def test_windows_with_skip_end_earlier_within_the_user():
    rng = np.random.default_rng(4)
    user, item, time = rng.integers(0, 30, 2000), rng.integers(0, 200, 2000), rng.integers(0, 500, 2000)
    h = Histories.build(user, item, time, 8)
    rows = rng.permutation(len(h))[:300]
    skip = rng.integers(0, 12, len(rows))
    got = h.windows(rows, skip=skip)
    np.testing.assert_array_equal(h.windows(rows, skip=np.zeros(len(rows), dtype=np.int64)), h.windows(rows))
    s_user = user[h.order]
    for r, k, g in zip(rows, skip, got):
        start = np.flatnonzero(s_user == s_user[r])[0]
        cand = h.items[start:h.hi[r]].tolist()          # the user's positives strictly before event r
        cand = cand[:max(0, len(cand) - k)][-8:]
        assert g.tolist() == [-1] * (8 - len(cand)) + cand
