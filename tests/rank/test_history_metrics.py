"""Vectorised histories and metrics against plain reference implementations."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

from qarm.rank.history import last_n_before
from qarm.rank.metrics import auc, auc_by_group, gauc, logloss


def test_last_n_before_matches_a_loop_with_ties_and_padding():
    rng = np.random.default_rng(0)
    g, t = rng.integers(0, 7, 400), rng.integers(0, 60, 400)  # many equal timestamps
    order = np.lexsort((t, g))
    v = np.arange(1, 401)
    qg, qt = rng.integers(0, 8, 300), rng.integers(-5, 70, 300)  # group 7 unseen, times outside range
    got, length = last_n_before(g, t, v, qg, qt, 5)
    for row, (gg, tt) in enumerate(zip(qg, qt)):
        ref = [int(v[i]) for i in order if g[i] == gg and t[i] < tt][-5:]
        assert got[row].tolist() == [0] * (5 - len(ref)) + ref
        assert length[row] == len(ref)


def test_auc_gauc_logloss_match_sklearn_and_numpy():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 3000)
    s = np.round(rng.normal(size=3000) + 0.7 * y, 1)  # rounded: many ties
    users = rng.integers(0, 40, 3000)
    assert math.isclose(auc(y, s), roc_auc_score(y, s), rel_tol=1e-12)
    per_user = [(roc_auc_score(y[users == u], s[users == u]), (users == u).sum())
                for u in np.unique(users) if len(set(y[users == u])) == 2]
    ref = sum(a * w for a, w in per_user) / sum(w for _, w in per_user)
    assert math.isclose(gauc(y, s, users), ref, rel_tol=1e-12)
    p = 1 / (1 + np.exp(-s))
    assert math.isclose(logloss(y, p), float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()), rel_tol=1e-9)
    buckets = auc_by_group(y, s, np.where(users < 10, "a", "b"))
    assert math.isclose(buckets["a"], roc_auc_score(y[users < 10], s[users < 10]), rel_tol=1e-12)
    assert math.isnan(auc(np.ones(5), np.arange(5.0)))  # one class: undefined, not 0.5
