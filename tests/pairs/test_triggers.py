"""Trigger mining: batched path against the per-event loop; strictly-before, window, never-self."""

import numpy as np

from qarm.pairs.triggers import mine_triggers, mine_triggers_reference, padded_windows, window_bounds


def unit_rows(n, d, seed):
    e = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_matches_per_event_loop_with_ties_and_repeats():
    rng = np.random.default_rng(0)
    n = 6000
    user, item, time = rng.integers(0, 150, n), rng.integers(0, 80, n), rng.integers(0, 300, n)  # many ties, repeats
    emb = unit_rows(80, 8, 1)
    trig, targ, score, event = mine_triggers(user, item, time, emb, window=6, block=8, chunk=256, progress=False)
    ref = mine_triggers_reference(user, item, time, emb, window=6)
    assert set(event.tolist()) == set(ref)
    np.testing.assert_array_equal(targ, item[event])
    for t, g, s, e in zip(trig, targ, score, event):
        ref_item, ref_sim = ref[e]
        assert abs(s - ref_sim) < 1e-5 and abs(float(emb[t] @ emb[g]) - s) < 1e-5
    assert (trig != targ).all()


def test_trigger_is_strictly_earlier_and_within_window():
    # one user: items 0..9 at times 0..9, item 10 at time 9 (tie with item 9), window 3
    user = np.zeros(11, dtype=np.int64)
    item = np.r_[np.arange(10), 10]
    time = np.r_[np.arange(10), 9]
    emb = np.eye(11, dtype=np.float32)
    emb[10] = emb[9] + emb[1]          # item 10 most resembles 9 (same second: not allowed) and 1 (too old)
    emb[10] += 0.5 * emb[7]            # ... then 7, which is inside the window {6, 7, 8}
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    trig, targ, _, event = mine_triggers(user, item, time, emb, window=3, progress=False)
    assert trig[targ == 10].tolist() == [7]
    assert 0 not in event.tolist()     # the first event has nothing before it


def test_windows_are_per_user_and_padded():
    user = np.array([1, 1, 1, 2, 2])
    time = np.array([5, 5, 6, 1, 2])
    lo, hi = window_bounds(user, time, window=5)
    assert lo.tolist() == [0, 0, 0, 3, 3] and hi.tolist() == [0, 0, 2, 3, 4]
    w = padded_windows(np.array([10, 11, 12, 20, 21]), lo, hi, 3)
    assert w.tolist() == [[-1, -1, -1], [-1, -1, -1], [-1, 10, 11], [-1, -1, -1], [-1, -1, 20]]


def test_long_same_second_runs_with_small_chunks():
    # a user who clicks 300 items in one second, then 50 more: the band must reach past the tie run
    rng = np.random.default_rng(2)
    user = np.r_[np.zeros(350, dtype=np.int64), rng.integers(1, 20, 500)]
    time = np.r_[np.full(300, 100), np.arange(101, 151), rng.integers(0, 50, 500)]
    item = rng.integers(0, 60, len(user))
    emb = unit_rows(60, 8, 3)
    trig, targ, score, event = mine_triggers(user, item, time, emb, window=5, block=8, chunk=64, progress=False)
    ref = mine_triggers_reference(user, item, time, emb, window=5)
    assert set(event.tolist()) == set(ref)
    assert max(abs(s - ref[e][1]) for s, e in zip(score, event)) < 1e-5
