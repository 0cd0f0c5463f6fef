"""Ranker training step with and without code content (``rank.code_content``), at two catalogue sizes.

The ``qarm`` item representation (id, a VQ bag of K codes, L RQ levels and L-1 prefixes) on a
synthetic catalogue: codes drawn at random, a d-dimensional content vector per code. One step =
forward and backward of ``RankModel`` on a batch of B targets with N history items each (the rows a
real batch touches), dense Adam-free (only the gradient), single process. Printed per size: ms per
step without and with content, their ratio (the reference is the same model without content,
measured in the same run), and the content vectors' memory (4 x d bytes per code).

The claim it checks: a step costs O(rows the batch touches x K x d), not O(catalogue). The step
time at 1M items should be close to the one at 10k items (the embedding tables' dense gradients
aside: pass ``--sparse`` for the row-sparse gradients large catalogues use, ``rank.sparse_ids``).

    python benchmarks/bench_code_content.py                     # 10k and 1M items, 20 timed steps
    python benchmarks/bench_code_content.py --items 10000 --steps 5   # quick check
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from qarm.rank.features import FeatureSpec, ItemTables
from qarm.rank.model import RankModel


def catalogue(n_items: int, k: int, levels: int, rq_size: int, d: int, seed: int = 0) -> ItemTables:
    """Random codes for n_items items (a VQ pool of n_items / 4 codes) and a content vector per code."""
    rng = np.random.default_rng(seed)
    rows = n_items + 2
    t = ItemTables(item_ids=np.arange(n_items, dtype=np.int64))
    t.index["item_id"] = np.r_[[0, 1], np.arange(2, rows)].astype(np.int64)[:, None]
    t.vocab["item_id"] = rows
    pool = max(n_items // 4, k) + 2
    t.index["vq"] = rng.integers(2, pool, (rows, k))
    t.vocab["vq"] = pool
    for d_ in range(1, levels + 1):
        t.index[f"rq_l{d_}"] = rng.integers(2, rq_size + 2, (rows, 1))
        t.vocab[f"rq_l{d_}"] = rq_size + 2
    for d_ in range(2, levels + 1):
        vocab = min(rq_size ** d_, n_items) + 2
        t.index[f"rq_p{d_}"] = rng.integers(2, vocab, (rows, 1))
        t.vocab[f"rq_p{d_}"] = vocab
    for name in list(t.index):
        t.index[name][0] = 0
        if name != "item_id":
            t.content[name] = rng.normal(size=(t.vocab[name], d)).astype(np.float32)
    return t


def specs(t: ItemTables, content: int, k: int, levels: int, history: int) -> list[FeatureSpec]:
    out = [FeatureSpec("user_id", "user", 1000, 16), FeatureSpec("item_id", "item", t.vocab["item_id"], 16),
           FeatureSpec("vq", "item", t.vocab["vq"], 16, "mean", k, content=content),
           FeatureSpec("history", "sequence", history, 0)]
    names = [f"rq_l{d}" for d in range(1, levels + 1)] + [f"rq_p{d}" for d in range(2, levels + 1)]
    return out + [FeatureSpec(n, "item", t.vocab[n], 8, content=content) for n in names]


def step_ms(model: RankModel, batches: list[dict[str, torch.Tensor]], warmup: int) -> float:
    model.train()
    times = []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model(batch).sum().backward()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", default="10000,1000000", help="comma-separated catalogue sizes")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--k", type=int, default=25, help="VQ bag size")
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--rq-size", type=int, default=32)
    ap.add_argument("--content-dim", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sparse", action="store_true", help="row-sparse embedding gradients (rank.sparse_ids)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    one, five, _ = os.getloadavg()
    print(f"machine load {one:.2f} / {five:.2f} (1/5 min) on {os.cpu_count()} cores; threads {a.threads}; "
          f"batch {a.batch} x history {a.history}; VQ K {a.k}, RQ {a.levels} x {a.rq_size}; content d {a.content_dim}; "
          f"{'sparse' if a.sparse else 'dense'} embedding gradients; median of {a.steps} steps")
    print(f"{'items':>9} {'codes':>9} {'content MB':>10} {'ms/step off':>12} {'ms/step on':>11} {'on / off':>9}")
    for n in (int(x) for x in a.items.split(",")):
        t = catalogue(n, a.k, a.levels, a.rq_size, a.content_dim)
        rng = np.random.default_rng(1)
        batches = [{"user": torch.as_tensor(rng.integers(2, 1000, a.batch)),
                    "target": torch.as_tensor(rng.integers(2, n + 2, a.batch)),
                    "history": torch.as_tensor(rng.integers(0, n + 2, (a.batch, a.history)))}
                   for _ in range(a.steps + a.warmup)]
        figures = []
        for content in (0, a.content_dim):
            torch.manual_seed(0)
            model = RankModel(specs(t, content, a.k, a.levels, a.history), t, 1, [64, 16], [256, 128],
                              att_dim=16, sparse=a.sparse)
            figures.append(step_ms(model, batches, a.warmup))
        codes = sum(v.shape[0] for v in t.content.values())
        mb = sum(v.nbytes for v in t.content.values()) / 2 ** 20
        print(f"{n:>9,} {codes:>9,} {mb:>10.0f} {figures[0]:>12.1f} {figures[1]:>11.1f} {figures[1] / figures[0]:>8.2f}x")


if __name__ == "__main__":
    main()
