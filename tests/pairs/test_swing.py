"""Swing: the fast chunked path against the formula itself and against the sparse reference."""

import itertools
from collections import defaultdict

import numpy as np
import pytest

from qarm.pairs.swing import Swing, cap_interactions, swing_reference


def brute_force_swing(user, item, alpha=1.0):
    """The definition, literally: sum over unordered user pairs of w_u w_v / (alpha + |I_u ∩ I_v|)."""
    I, U = defaultdict(set), defaultdict(set)
    for u, i in zip(user, item):
        I[u].add(i)
        U[i].add(u)
    out = {}
    for a in U:
        for b in U:
            if a == b:
                continue
            s = sum(1 / np.sqrt(len(I[u]) * len(I[v])) / (alpha + len(I[u] & I[v]))
                    for u, v in itertools.combinations(sorted(U[a] & U[b]), 2))
            if s > 0:
                out[(a, b)] = s
    return out


def learned_scores(sw):
    return {(int(a), int(nb)): float(s) for a, row, srow in zip(sw.items_, sw.neighbours_, sw.scores_)
            for nb, s in zip(row, srow) if nb >= 0}


def random_log(n, n_users, n_items, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_users, n), rng.integers(0, n_items, n) * 7 + 3, rng.integers(0, 10_000, n)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_swing_equals_the_formula(alpha):
    user, item, _ = random_log(500, 40, 30, seed=1)
    sw = Swing(alpha=alpha, max_user_history=10**6, max_item_users=10**6, topn=30, progress=False).fit(user, item)
    expected = brute_force_swing(user, item, alpha)
    got = learned_scores(sw)
    assert set(got) == set(expected)
    assert max(abs(got[k] - expected[k]) for k in expected) < 1e-6
    assert sw.n_repeats_ == 500 - len(set(zip(user, item)))


def test_swing_equals_sparse_reference_under_caps_and_chunk_splits():
    user, item, time = random_log(20_000, 600, 300, seed=2)
    kw = dict(max_user_history=15, max_item_users=40, topn=25, progress=False)
    sw = Swing(**kw).fit(user, item, time)
    # tiny budgets force many chunks and the halving path: same answer
    split = Swing(**kw, chunk_budget=500, pair_budget=2_000).fit(user, item, time)
    np.testing.assert_array_equal(sw.neighbours_, split.neighbours_)
    np.testing.assert_allclose(sw.scores_, split.scores_, rtol=1e-6)
    cu, ci, _ = cap_interactions(user, item, time, 15, 40, seed=0)
    S, items = swing_reference(cu, ci)
    np.testing.assert_array_equal(items, sw.items_)
    S = S.toarray()
    for r in range(len(items)):
        keep = sw.neighbours_[r] >= 0
        cols = np.searchsorted(items, sw.neighbours_[r][keep])
        np.testing.assert_allclose(sw.scores_[r][keep], S[r, cols], rtol=1e-5)
        # top-N really are the N best: the N-th kept score is >= every score left out
        if keep.all():
            rest = np.delete(S[r], cols)
            assert sw.scores_[r][-1] >= rest.max() * (1 - 1e-6)


def test_caps_keep_latest_history_and_bounded_item_users():
    user, item, time = random_log(30_000, 200, 100, seed=3)
    cu, ci, repeats = cap_interactions(user, item, time, max_user_history=12, max_item_users=25, seed=0)
    assert np.bincount(np.unique(cu, return_inverse=True)[1]).max() <= 12
    assert np.bincount(np.unique(ci, return_inverse=True)[1]).max() == 25
    assert len(set(zip(cu.tolist(), ci.tolist()))) == len(cu)
    assert repeats == 30_000 - len(set(zip(user.tolist(), item.tolist())))
    # the kept items of a user are among that user's 12 latest distinct items
    u0 = cu[0]
    latest = {}
    for i, t in zip(item[user == u0], time[user == u0]):
        latest[i] = max(t, latest.get(i, -1))
    top = {i for i, _ in sorted(latest.items(), key=lambda kv: -kv[1])[:12]}
    assert set(ci[cu == u0]) <= top


def test_stable_pairs_threshold_and_mutual():
    user, item, time = random_log(5_000, 300, 120, seed=4)
    sw = Swing(topn=3, progress=False).fit(user, item, time)
    a, b, s = sw.pairs()
    assert (s > 0).all() and len(a) <= 3 * len(sw.items_)
    hi = np.median(s)
    assert (sw.pairs(min_score=hi)[2] > hi).all()
    ma, mb, _ = sw.pairs(mutual=True)
    kept = set(zip(a.tolist(), b.tolist()))
    assert len(ma) < len(a)
    assert all((y, x) in kept for x, y in zip(ma.tolist(), mb.tolist()))


def test_deterministic_given_seed():
    user, item, time = random_log(8_000, 300, 100, seed=5)
    kw = dict(max_item_users=10, topn=5, progress=False)
    a, b = Swing(**kw, random_state=7).fit(user, item, time), Swing(**kw, random_state=7).fit(user, item, time)
    np.testing.assert_array_equal(a.neighbours_, b.neighbours_)
    np.testing.assert_array_equal(a.scores_, b.scores_)


def test_empty_input():
    sw = Swing(progress=False).fit(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert sw.neighbours_.shape == (0, 20) and len(sw.pairs()[0]) == 0
