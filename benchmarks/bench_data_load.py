"""Benchmark: load and validate synthetic events from Parquet vs a plain pyarrow read.

Generates ``--events`` events with the synthetic world (no media), writes them to Parquet, then
times (best of ``--repeat``) in the same process:

- reference: ``pyarrow.parquet.read_table(path)`` (a plain read, no checks);
- qarm: ``qarm.data.files.read_table`` + ``qarm.data.schema.validate_events`` (typed columns,
  every bad-input check: ids, timestamps, 0/1 labels, unknown items).

Prints rows/s of both and the ratio qarm / reference (goal: < 2x).

    python benchmarks/bench_data_load.py                 # 10M events (~2 minutes on 2 cores)
    python benchmarks/bench_data_load.py --events 1000000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from qarm.data.config import SyntheticConfig
from qarm.data.files import read_table
from qarm.data.schema import validate_events
from qarm.data.synthetic import generate_world
from qarm.io import write_parquet


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cfg = SyntheticConfig(n_users=args.users, n_items=args.items, n_events=args.events)
    t0 = time.perf_counter()
    world = generate_world(cfg, args.seed)
    print(f"generated {args.events:,} events in {time.perf_counter() - t0:.1f}s")
    item_ids = world.items["item_id"].to_numpy()
    labels = ["click", "like"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.parquet"
        write_parquet(path, world.events)
        del world
        size_mb = path.stat().st_size / 1e6
        print(f"file: {size_mb:.1f} MB, columns: {pq.ParquetFile(path).schema_arrow.names}")

        def load_validate():
            skipped: Counter = Counter()
            return validate_events(read_table(path, "events"), item_ids, labels, file=str(path), skipped=skipped)

        # Interleaved, best of --repeat: other work on the machine hits both sides alike.
        t_ref = t_qarm = float("inf")
        for _ in range(args.repeat):
            t, table = timed(lambda: pq.read_table(path))
            t_ref, n = min(t_ref, t), table.num_rows
            del table
            t, events = timed(load_validate)
            t_qarm = min(t_qarm, t)
            assert len(events) == n and events["timestamp"].dtype == np.int64 and events["click"].dtype == np.int8
            del events

    print(f"pyarrow read_table (reference): {t_ref:.3f}s  {n / t_ref / 1e6:.1f} M rows/s")
    print(f"qarm load + validate:           {t_qarm:.3f}s  {n / t_qarm / 1e6:.1f} M rows/s")
    print(f"ratio qarm / pyarrow read: {t_qarm / t_ref:.2f}x  (goal < 2x)")


if __name__ == "__main__":
    main()
