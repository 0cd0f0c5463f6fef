"""Benchmark: build report.html for a large run directory vs a plain read of the artifacts it reads.

Writes a synthetic run directory of MovieLens-25M-like size (``--items``, ``--events``, ``--pairs``;
embeddings, codes and every stage's figures), then times in the same process:

- reference: reading every artifact the report reads with pyarrow / numpy (items, the events
  columns it needs, pairs, codes, both embedding matrices) and nothing else: the I/O floor;
- qarm: every report section (``qarm.report.stage.SECTIONS``, every plot rendered to PNG), per section;
- reference 2: the matplotlib floor, as many simple two-panel bar charts rendered to PNG as the
  report drew: what any matplotlib report with that many plots costs.

Prints wall and CPU seconds per section, the totals, and the ratios report / reference.

    python benchmarks/bench_report.py                        # 60k items, 10M events (~2 minutes)
    python benchmarks/bench_report.py --items 1682 --events 100000 --pairs 20000   # ml-100k size
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from qarm.config import load_config
from qarm.data.split import freq_buckets
from qarm.io import write_json, write_npy, write_parquet
from qarm.report.context import ReportContext
from qarm.report.plots import figure_html, new_figure
from qarm.report.stage import SECTIONS
from qarm.runner import RunDir

GENRES = np.array(["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Animation", "War"])
VARIANTS = ["id", "frozen_mm", "ia_rep", "vq", "rq", "qarm"]


def l2(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_run(run: Path, n_items: int, n_events: int, n_pairs: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    item_ids = np.arange(1, n_items + 1, dtype=np.int64)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    item_row = rng.choice(n_items, size=n_events, p=pop / pop.sum())
    ts = np.sort(rng.integers(1_000_000_000, 1_100_000_000, size=n_events))
    cut1, cut2 = np.quantile(ts, [0.8, 0.9])
    holdout = rng.random(n_items) < 0.1
    split = np.where(ts < cut1, "train", np.where(ts < cut2, "valid", "test")).astype(object)
    held = holdout[item_row]
    split[held] = np.where(ts[held] >= cut2, "cold_test", "cold_excluded")
    write_parquet(run / "events.parquet", pd.DataFrame({
        "user_id": rng.integers(1, n_events // 60 + 2, size=n_events), "item_id": item_ids[item_row],
        "timestamp": ts, "click": (rng.random(n_events) < 0.55).astype(np.int8),
        "like": (rng.random(n_events) < 0.2).astype(np.int8), "split": split}))
    train_count = np.bincount(item_row[split == "train"], minlength=n_items).astype(np.int64)
    genre = GENRES[rng.integers(0, len(GENRES), size=n_items)]
    write_parquet(run / "items.parquet", pd.DataFrame({
        "item_id": item_ids, "title": [f"Movie {i}" for i in item_ids], "category": genre,
        "has_text": True, "has_image": rng.random(n_items) < 0.97, "has_audio": False, "holdout": holdout,
        "cold": holdout | (train_count == 0), "train_count": train_count,
        "freq_bucket": freq_buckets(train_count, [0, 5, 20, 100])}))
    src = np.where(rng.random(n_pairs) < 0.5, "u2i", "i2i")
    write_parquet(run / "pairs.parquet", pd.DataFrame({
        "trigger_id": item_ids[rng.integers(0, n_items, n_pairs)], "target_id": item_ids[rng.integers(0, n_items, n_pairs)],
        "source": src, "score": rng.random(n_pairs).astype(np.float32)}))
    business = rng.integers(0, 16, size=n_items)
    centres = rng.standard_normal((16, 128))
    write_npy(run / "emb_raw.npy", l2(rng.standard_normal((n_items, 384))))
    write_npy(run / "emb_aligned.npy", l2(centres[business] + rng.standard_normal((n_items, 128))))
    rq = rng.integers(0, 256, size=(n_items, 3)).astype(np.int32)
    vq = rng.integers(0, n_items, size=(n_items, 25)).astype(np.int32)
    write_parquet(run / "codes.parquet", pd.DataFrame({"item_id": item_ids, "vq": list(vq), "rq": list(rq)}))
    variants = {v: {t: {k: {"mean": 0.7 + 0.01 * i, "std": 0.003} for k in ("auc", "gauc", "logloss", "cold_auc")}
                    for t in ("click", "like")} for i, v in enumerate(VARIANTS)}
    buckets = {v: {t: {b: 0.7 for b in ("0", "1-4", "5-19", "20-99", "100+")} for t in ("click", "like")}
               for v in VARIANTS}
    write_json(run / "metrics.json", {
        "prepare": {"n_users": n_events // 60, "n_items": n_items, "n_events": n_events, "n_cold_items": int(holdout.sum()),
                    "modality_coverage": {"text": 1.0, "image": 0.97, "audio": 0.0}, "skipped": {}},
        "pairs": {"n_u2i": int((src == "u2i").sum()), "n_i2i": int((src == "i2i").sum()), "item_coverage": 0.9,
                  "u2i_recall@10": 0.1, "u2i_recall@50": 0.3, "popularity_recall@50": 0.2},
        "align": {"raw.recall@10": 0.02, "raw.recall@50": 0.07, "aligned.recall@10": 0.09, "aligned.recall@50": 0.28,
                  "mode": "head", "dim": 128, "epochs": 10, "loss_history": [5.0, 4.0, 3.5]},
        "quantize": {"rq.levels": 3, "rq.sizes": [256, 256, 256], "rq.collision_rate": 0.1,
                     "rq.utilization": [1.0, 1.0, 1.0], "rq.perplexity": [250.0, 250.0, 250.0],
                     "rq.rel_recon_error": [0.5, 0.4, 0.3], "vq.k": 25, "vq.pool_size": n_items},
        "rank": {"variants": variants, "buckets": buckets}})


def read_artifacts(run: Path) -> int:
    """The reference: read what the report reads, with nothing on top. Returns rows read."""
    rows = pq.read_table(run / "items.parquet").num_rows
    rows += pq.read_table(run / "events.parquet", columns=["split", "click", "like"]).num_rows
    rows += pq.read_table(run / "pairs.parquet").num_rows
    rows += pq.read_table(run / "codes.parquet").num_rows
    rows += np.load(run / "emb_raw.npy").shape[0] + np.load(run / "emb_aligned.npy").shape[0]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=60_000)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--pairs", type=int, default=2_000_000)
    ap.add_argument("--projection-max-items", type=int, default=3000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        t0 = time.perf_counter()
        write_run(run, args.items, args.events, args.pairs)
        print(f"run directory written in {time.perf_counter() - t0:.1f}s: {args.items:,} items, "
              f"{args.events:,} events, {args.pairs:,} pairs")
        # wall and CPU seconds: on a shared machine CPU time is the steadier figure
        t0, c0 = time.perf_counter(), time.process_time()
        rows = read_artifacts(run)
        ref, ref_cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"reference (pyarrow/numpy read of the same artifacts, {rows:,} rows): {ref:.2f}s wall, "
              f"{ref_cpu:.2f}s CPU")
        cfg = load_config(None, [f"report.projection_max_items={args.projection_max_items}"])
        ctx = ReportContext.load(cfg, RunDir(run))
        total = total_cpu = 0.0
        n_plots = 0
        for anchor, _, draw in SECTIONS:
            t0, c0 = time.perf_counter(), time.process_time()
            n_plots += draw(ctx).count("<img ")
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            total, total_cpu = total + dt, total_cpu + dc
            print(f"  section {anchor:<10} {dt:6.2f}s wall {dc:6.2f}s CPU")
        print(f"report: {total:.2f}s wall, {total_cpu:.2f}s CPU for all sections ({n_plots} plots); "
              f"ratio report / reference read = {total / ref:.1f}x wall, {total_cpu / max(ref_cpu, 1e-9):.1f}x CPU")
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n_plots):
            fig, axes = new_figure(ncols=2, width=9.5, height=3.2)
            for ax in axes:
                ax.bar(np.arange(10), np.arange(10))
            figure_html(fig, "floor")
        floor, floor_cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"reference 2 (matplotlib floor: {n_plots} two-panel bar charts rendered to PNG): {floor:.2f}s wall, "
              f"{floor_cpu:.2f}s CPU; ratio report / floor = {total / floor:.2f}x wall, "
              f"{total_cpu / max(floor_cpu, 1e-9):.2f}x CPU")


if __name__ == "__main__":
    main()
