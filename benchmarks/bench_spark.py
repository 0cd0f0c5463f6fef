"""engine=local vs engine=spark: wall time and peak memory of ``prepare`` + ``pairs`` on synthetic events.

    python benchmarks/bench_spark.py --sizes 1M,10M --master 'local[2]' --out /tmp/bench_spark

For every size, the events are generated here with numpy (users with a preferred item cluster,
Zipf item popularity, one year of timestamps, click/like labels) and written once as
``events.parquet`` + ``items.csv``; each engine then runs ``prepare,pairs`` on them through
``data.source=files`` in its own subprocess (so peak memory is per engine), one U2I epoch, with
``pairs.u2i_sparse`` on by default (row-wise Adam: a step costs O(batch); with dense Adam a step
rewrites every row of the id tables, O(users) at 1.25M users at 50M events, and pairs did not
finish in 3,600 s there; ``--no-u2i-sparse`` measures that).

Per engine and size it reports wall time of each stage, the U2I training time inside ``pairs``
(PyTorch, the same in both engines), and peak RSS of the driver (Python, ``ru_maxrss``), of the
JVM and of the Python workers (sampled every 0.5 s from the process tree with psutil). It prints
the spark/local ratios and the smallest size where Spark is faster, and writes ``results.json``.
A run that passes ``--timeout`` is recorded with what it had measured so far (finished stages,
peak RSS until then), which the worker writes to ``RUN/bench-progress.json`` every few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 10**3, "M": 10**6, "B": 10**9}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "KMB" else s) * mult)


def generate(n: int, out: Path, seed: int = 0) -> dict:
    """Synthetic events [n]: user_id, item_id, timestamp, click, like as events.parquet, items in items.csv."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    if (out / "events.parquet").exists() and (out / "items.csv").exists():
        return json.loads((out / "world.json").read_text())
    rng = np.random.default_rng(seed)
    n_users, n_items, n_clusters = max(1000, n // 40), max(2000, n // 500), 50
    cluster_of_item = rng.integers(0, n_clusters, n_items)
    by_cluster = np.argsort(cluster_of_item, kind="stable")
    starts = np.searchsorted(cluster_of_item[by_cluster], np.arange(n_clusters + 1))
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    pop /= pop.sum()
    activity = rng.pareto(1.5, n_users) + 1.0
    user = rng.choice(n_users, size=n, p=activity / activity.sum())
    pref = rng.integers(0, n_clusters, n_users)[user]
    in_cluster = rng.random(n) < 0.7
    item = rng.choice(n_items, size=n, p=pop)  # global popularity ...
    c = pref[in_cluster]
    lo, size = starts[c], np.maximum(starts[c + 1] - starts[c], 1)
    item[in_cluster] = by_cluster[np.minimum(lo + (rng.random(len(c)) ** 2 * size).astype(np.int64),
                                             n_items - 1)]  # ... or the user's cluster, its head first
    ts = 1_600_000_000 + rng.integers(0, 365 * 86400, n)
    click = (rng.random(n) < np.where(cluster_of_item[item] == pref, 0.6, 0.3)).astype(np.int8)
    like = (click & (rng.random(n) < 0.4)).astype(np.int8)
    table = pa.table({"user_id": pa.array(user + 1, pa.int64()), "item_id": pa.array(item + 1, pa.int64()),
                      "timestamp": pa.array(ts, pa.int64()), "click": click, "like": like})
    pq.write_table(table, out / "events.parquet", row_group_size=1 << 20)
    pd.DataFrame({"item_id": np.arange(1, n_items + 1),
                  "title": [f"item {i}" for i in range(1, n_items + 1)],
                  "category": [f"cluster {c}" for c in cluster_of_item]}).to_csv(out / "items.csv", index=False)
    world = {"n_events": n, "n_users": n_users, "n_items": n_items}
    (out / "world.json").write_text(json.dumps(world))
    return world


def driver_peak_rss_mb() -> float:
    """Peak RSS of this process so far, exact (the kernel's ``ru_maxrss``, KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class TreeSampler(threading.Thread):
    """Peak RSS of this process's descendants (the JVM, the PySpark Python workers); every
    ``progress_every`` s it writes them, the driver's peak so far and the stages finished (from the
    run's manifest) to ``RUN/bench-progress.json``, so that a run killed at the timeout still
    reports them."""

    def __init__(self, run: Path, interval: float = 0.5, progress_every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.stop, self.jvm, self.workers = interval, threading.Event(), 0, 0
        self.run_dir, self.progress_every, self.t0 = run, progress_every, time.perf_counter()
        # the manifest keeps entries of an earlier run in the same folder: count only what finished since
        self.started = datetime.now(timezone.utc).replace(microsecond=0)

    def progress(self) -> dict:
        try:
            stages = json.loads((self.run_dir / "manifest.json").read_text())["stages"]
        except (OSError, ValueError, KeyError):
            stages = {}
        return {"elapsed_s": round(time.perf_counter() - self.t0, 1),
                "stages_done": {k: v.get("wall_s") for k, v in stages.items()
                                if isinstance(v, dict) and self._finished_since_start(v)},
                "driver_peak_rss_mb": driver_peak_rss_mb(), "jvm_peak_rss_mb": round(self.jvm / 2**20, 1),
                "workers_peak_rss_mb": round(self.workers / 2**20, 1)}

    def _finished_since_start(self, entry: dict) -> bool:
        try:
            return datetime.strptime(entry["finished_at"], "%Y-%m-%dT%H:%M:%S%z") >= self.started
        except (KeyError, TypeError, ValueError):
            return False

    def write_progress(self) -> None:
        tmp = self.run_dir / "bench-progress.json.tmp"
        tmp.write_text(json.dumps(self.progress()))
        os.replace(tmp, self.run_dir / "bench-progress.json")

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        last = 0.0
        while not self.stop.is_set():
            if time.perf_counter() - last >= self.progress_every:
                self.write_progress()
                last = time.perf_counter()
            jvm = workers = 0
            try:
                for p in me.children(recursive=True):
                    try:
                        rss = p.memory_info().rss
                        if "java" in p.name():
                            jvm += rss
                        else:
                            workers += rss
                    except psutil.Error:
                        continue
            except psutil.Error:
                pass
            self.jvm, self.workers = max(self.jvm, jvm), max(self.workers, workers)
            self.stop.wait(self.interval)


def worker(args: argparse.Namespace) -> None:
    """One engine on one data folder, in this (fresh) process; prints a JSON line of figures."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("QARM_BENCH_THREADS", "2")))
    from qarm.config import load_config
    from qarm.pairs import twotower
    from qarm.runner import run_stages

    u2i_s = [0.0]
    fit = twotower.U2IRetriever.fit

    def timed_fit(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return fit(self, *a, **kw)
        finally:
            u2i_s[0] += time.perf_counter() - t0

    twotower.U2IRetriever.fit = timed_fit
    data = Path(args.data)
    overrides = ["data.source=files", f"data.path={data}", "data.items_file=items.csv",
                 "data.events_file=events.parquet", f"engine.name={args.engine}", f"engine.spark_master={args.master}",
                 f"engine.spark_conf={{spark.driver.memory: '{args.driver_memory}'}}",
                 "pairs.u2i_epochs=1", "pairs.u2i_batch_size=4096", f"pairs.u2i_sparse={str(args.u2i_sparse).lower()}"]
    cfg = load_config(None, overrides)
    Path(args.run).mkdir(parents=True, exist_ok=True)
    sampler = TreeSampler(Path(args.run))
    sampler.start()
    t0 = time.perf_counter()
    run_stages(cfg, args.run, stages=["prepare", "pairs"], force=True, log=lambda m: print(m, file=sys.stderr))
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    manifest = json.loads((Path(args.run) / "manifest.json").read_text())["stages"]
    metrics = json.loads((Path(args.run) / "metrics.json").read_text())
    print(json.dumps({
        "engine": args.engine, "u2i_sparse": args.u2i_sparse, "wall_s": round(wall, 1),
        "prepare_s": manifest["prepare"]["wall_s"], "pairs_s": manifest["pairs"]["wall_s"],
        "u2i_fit_s": round(u2i_s[0], 1),
        "driver_peak_rss_mb": driver_peak_rss_mb(),
        "jvm_peak_rss_mb": round(sampler.jvm / 2**20, 1), "workers_peak_rss_mb": round(sampler.workers / 2**20, 1),
        "n_pairs": metrics["pairs"]["n_pairs"], "n_events": metrics["prepare"]["n_events"],
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,10M,50M", help="comma-separated event counts, e.g. 1M,10M,50M")
    ap.add_argument("--engines", default="local,spark")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="6g", help="spark.driver.memory (local mode: the whole JVM)")
    ap.add_argument("--out", default="/tmp/bench_spark")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per engine run before it is abandoned")
    ap.add_argument("--u2i-sparse", action=argparse.BooleanOptionalAction, default=True,
                    help="pairs.u2i_sparse: row-wise Adam on the U2I id tables (default on)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    out = Path(args.out)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    for size in args.sizes.split(","):
        n = parse_size(size)
        t0 = time.perf_counter()
        world = generate(n, out / f"data-{n}")
        print(f"{size}: {world} generated in {time.perf_counter() - t0:.0f}s", flush=True)
        row = results.setdefault(str(n), {"world": world})
        for engine in args.engines.split(","):
            cmd = [sys.executable, __file__, "--worker", "--engine", engine, "--data", str(out / f"data-{n}"),
                   "--run", str(out / f"run-{n}-{engine}"), "--master", args.master,
                   "--driver-memory", args.driver_memory, "--u2i-sparse" if args.u2i_sparse else "--no-u2i-sparse"]
            # own process group, so that a timeout also ends the JVM and the Python workers it started
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            try:
                stdout, stderr = proc.communicate(timeout=args.timeout)
                res = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                progress = out / f"run-{n}-{engine}" / "bench-progress.json"
                row[engine] = {"error": f"timeout after {args.timeout:.0f}s", "u2i_sparse": args.u2i_sparse,
                               "until_timeout": json.loads(progress.read_text()) if progress.exists() else None}
                print(f"  {engine}: {row[engine]}", flush=True)
                (out / "results.json").write_text(json.dumps(results, indent=2))
                continue
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
            row[engine] = json.loads(lines[-1]) if res.returncode == 0 and lines else {
                "error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
            print(f"  {engine}: {row[engine]}", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    report(results)


def report(results: dict) -> None:
    print(f"\n{'events':>12} {'engine':>6} {'prepare s':>10} {'pairs s':>8} {'(u2i s)':>8} {'total s':>8} "
          f"{'driver MB':>10} {'JVM MB':>8} {'workers MB':>10}")
    crossover = None
    for n in sorted(results, key=int):
        row = results[n]
        for engine in ("local", "spark"):
            r = row.get(engine)
            if not r or "error" in r:
                part = (r or {}).get("until_timeout") or {}
                print(f"{int(n):>12,} {engine:>6} {r['error'] if r else 'not run'}"
                      + (f"; until then: stages done {part['stages_done']}, driver peak "
                         f"{part['driver_peak_rss_mb']:.0f} MB, JVM {part['jvm_peak_rss_mb']:.0f} MB, "
                         f"workers {part['workers_peak_rss_mb']:.0f} MB" if part else ""))
                continue
            print(f"{int(n):>12,} {engine:>6} {r['prepare_s']:>10.1f} {r['pairs_s']:>8.1f} {r['u2i_fit_s']:>8.1f} "
                  f"{r['wall_s']:>8.1f} {r['driver_peak_rss_mb']:>10.0f} {r['jvm_peak_rss_mb']:>8.0f} "
                  f"{r['workers_peak_rss_mb']:>10.0f}")
        loc, spk = row.get("local", {}), row.get("spark", {})
        if "wall_s" in loc and "wall_s" in spk:
            ratio = spk["wall_s"] / loc["wall_s"]
            mem = spk["driver_peak_rss_mb"] / loc["driver_peak_rss_mb"]
            print(f"{'':>12} spark/local: wall x{ratio:.2f}, driver RSS x{mem:.2f}, "
                  f"driver+JVM+workers RSS x{(spk['driver_peak_rss_mb'] + spk['jvm_peak_rss_mb'] + spk['workers_peak_rss_mb']) / loc['driver_peak_rss_mb']:.2f}")
            if ratio < 1 and crossover is None:
                crossover = int(n)
    print("crossover (Spark faster):", f"{crossover:,} events" if crossover else "not reached at these sizes")


if __name__ == "__main__":
    main()
