"""Benchmark of the pairs stage's hot paths: Swing I2I and trigger mining.

A synthetic behaviour log (default 10M events, 1M users, 200k items: lognormal user activity,
Zipf item popularity inside item clusters that users prefer) is mined with

* ``Swing`` (chunked, vectorised) at several fractions of the log, users and items scaled along,
  caps fixed: wall time, peak memory and time per million events (cost linear in events);
* ``swing_reference`` (whole user x user overlap ``X @ X.T`` up front, then a Python loop over items
  with sparse products) against ``Swing`` on the same capped edges of a smaller log: both timed,
  scores compared, ratio printed;
* ``mine_triggers`` on the full log (random unit item embeddings), and against the per-event
  loop ``mine_triggers_reference`` on the smaller log, ratio printed;
* the U2I histories: bytes of the CSR ``Histories`` against the dense int64 [n, window] matrix
  the stage built before, and the peak memory of blocked recall evaluation (``recall_hits``)
  against the users x items score matrix it replaces.

Peak memory is tracemalloc's peak of traced allocations (numpy and scipy buffers) in each call;
the process's max RSS is printed at the end. Run: ``python benchmarks/bench_pairs.py`` (about
5-10 minutes on 2 cores) or smaller, e.g. ``--events 1e6 --users 1e5 --items 2e4``.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np

from qarm.pairs.history import Histories
from qarm.pairs.swing import Swing, cap_interactions, swing_reference
from qarm.pairs.triggers import mine_triggers, mine_triggers_reference
from qarm.pairs.twotower import recall_hits


def synthetic_log(n_events: int, n_users: int, n_items: int, n_clusters: int = 200, in_cluster: float = 0.7,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user int64 [n], item int64 [n], timestamp int64 [n]) of a clustered, heavy-tailed log."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, n_users)
    user = rng.choice(n_users, n_events, p=activity / activity.sum())
    item_cluster = rng.integers(0, n_clusters, n_items)
    popularity = (1.0 / np.arange(1, n_items + 1) ** 0.9)[rng.permutation(n_items)]
    user_cluster = rng.integers(0, n_clusters, n_users)
    item = np.empty(n_events, dtype=np.int64)
    inside = rng.random(n_events) < in_cluster
    item[~inside] = rng.choice(n_items, int((~inside).sum()), p=popularity / popularity.sum())
    # in-cluster draws: inverse CDF over the popularity of the items of the user's cluster
    by_cluster = np.argsort(item_cluster, kind="stable")
    cum = np.r_[0.0, np.cumsum(popularity[by_cluster])]
    first = np.searchsorted(item_cluster[by_cluster], np.arange(n_clusters))
    last = np.searchsorted(item_cluster[by_cluster], np.arange(n_clusters), side="right")
    c = user_cluster[user[inside]]
    draw = cum[first[c]] + rng.random(len(c)) * (cum[last[c]] - cum[first[c]])
    item[inside] = by_cluster[np.clip(np.searchsorted(cum, draw, side="right") - 1, 0, n_items - 1)]
    return user.astype(np.int64), item, rng.integers(0, 10**8, n_events).astype(np.int64)


def measure(fn, *args, **kwargs):
    """(result, wall seconds, tracemalloc peak GiB) of one call."""
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    wall = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**30
    tracemalloc.stop()
    return out, wall, peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=float, default=10e6)
    p.add_argument("--users", type=float, default=1e6)
    p.add_argument("--items", type=float, default=2e5)
    p.add_argument("--fractions", default="0.1,0.3,1.0", help="Swing scaling points (share of the log)")
    p.add_argument("--ref-fraction", type=float, default=0.01, help="log share for the reference comparisons")
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--max-user-history", type=int, default=100)
    p.add_argument("--max-item-users", type=int, default=200)
    p.add_argument("--topn", type=int, default=20)
    a = p.parse_args()
    n, nu, ni = int(a.events), int(a.users), int(a.items)
    caps = dict(max_user_history=a.max_user_history, max_item_users=a.max_item_users, topn=a.topn, progress=False)
    print(f"synthetic log: {n:,} events, {nu:,} users, {ni:,} items; caps: history {a.max_user_history}, "
          f"users/item {a.max_item_users}; top-{a.topn}; trigger window {a.window}, dim {a.dim}")

    print("\n== Swing, cost against events (users and items scaled along, caps fixed)")
    print(f"{'events':>12} {'edges kept':>11} {'wall s':>8} {'s / 1M events':>14} {'peak GiB':>9} {'pairs':>10}")
    full_log = None
    for f in (float(x) for x in a.fractions.split(",")):
        log = synthetic_log(int(n * f), max(2, int(nu * f)), max(2, int(ni * f)))
        sw, wall, peak = measure(Swing(**caps).fit, *log)
        print(f"{len(log[0]):>12,} {sw.n_edges_:>11,} {wall:>8.1f} {wall / (len(log[0]) / 1e6):>14.2f} "
              f"{peak:>9.2f} {int((sw.neighbours_ >= 0).sum()):>10,}", flush=True)
        if f == 1.0:
            full_log = log
    if full_log is None:
        full_log = synthetic_log(n, nu, ni)

    print(f"\n== Swing against the straightforward sparse reference ({a.ref_fraction:.0%} of the log)")
    small = synthetic_log(int(n * a.ref_fraction), max(2, int(nu * a.ref_fraction)), max(2, int(ni * a.ref_fraction)),
                          seed=1)
    cu, ci, _ = cap_interactions(*small, a.max_user_history, a.max_item_users, seed=0)
    sw, fast_wall, fast_peak = measure(Swing(**caps).fit, cu, ci)
    (S, items), ref_wall, ref_peak = measure(swing_reference, cu, ci)
    S = S.tocsr()
    rows = np.repeat(np.arange(len(sw.items_)), a.topn)
    kept = sw.neighbours_.ravel() >= 0
    ref_scores = np.asarray(S[rows[kept], np.searchsorted(items, sw.neighbours_.ravel()[kept])]).ravel()
    err = float(np.abs(ref_scores - sw.scores_.ravel()[kept]).max() / max(ref_scores.max(), 1e-12))
    print(f"edges {len(cu):,}: Swing {fast_wall:.2f} s ({fast_peak:.2f} GiB), reference {ref_wall:.2f} s "
          f"({ref_peak:.2f} GiB); top-{a.topn} scores max relative difference {err:.1e}")
    print(f"ratio reference / Swing: {ref_wall / fast_wall:.1f}x")

    print("\n== Trigger mining")
    emb = np.random.default_rng(0).normal(size=(ni, a.dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    res, wall, peak = measure(mine_triggers, *full_log, emb, a.window, progress=False)
    print(f"{len(full_log[0]):,} events: {wall:.1f} s ({wall / (len(full_log[0]) / 1e6):.2f} s / 1M events), "
          f"peak {peak:.2f} GiB, {len(res[0]):,} triggers")
    s_emb = emb[: max(2, int(ni * a.ref_fraction))]
    res, fast_wall, _ = measure(mine_triggers, *small, s_emb, a.window, progress=False)
    sample = np.random.default_rng(0).choice(len(small[0]), min(20_000, len(small[0])), replace=False)
    ref, ref_wall, _ = measure(mine_triggers_reference, *small, s_emb, a.window, sample)
    got = dict(zip(res[3].tolist(), res[2].tolist()))
    agree = np.mean([abs(got[e] - s) < 1e-5 for e, (_, s) in ref.items()]) if ref else float("nan")
    per_fast, per_ref = fast_wall / len(small[0]), ref_wall / len(sample)
    print(f"{len(small[0]):,} events: batched {fast_wall:.2f} s; per-event loop on {len(sample):,} of them "
          f"{ref_wall:.2f} s; same trigger score on {agree:.1%}")
    print(f"ratio per-event loop / batched (time per event): {per_ref / per_fast:.0f}x")
    print("\n== U2I histories and recall evaluation memory")
    hist, wall, peak = measure(Histories.build, *full_log, a.window)
    csr = sum(x.nbytes for x in (hist.indptr, hist.items, hist.lo, hist.hi))
    print(f"CSR histories of {len(hist):,} events: {csr / 2**30:.3f} GiB ({wall:.1f} s, build peak {peak:.2f} GiB); "
          f"dense int64 [n, {a.window}]: {len(hist) * a.window * 8 / 2**30:.2f} GiB")
    users = hist.users[:: max(1, len(hist.users) // 20_000)]
    seen, indptr = hist.seen(users)
    targets = np.random.default_rng(1).integers(0, ni, len(users))
    user_emb = np.random.default_rng(2).normal(size=(len(users), a.dim)).astype(np.float32)
    _, wall, peak = measure(recall_hits, lambda rows: user_emb[rows] @ emb.T, targets, seen, indptr, (10, 50, 100))
    print(f"recall@10/50/100 of {len(users):,} users over {ni:,} items in blocks of 1024: {wall:.1f} s, "
          f"peak {peak:.2f} GiB; a dense score matrix would be {len(users) * ni * 4 / 2**30:.2f} GiB")
    print(f"\nprocess max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
