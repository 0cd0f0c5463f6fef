"""Benchmark of a data-parallel training step at catalogue scale: what ``qarm.distributed.data_parallel``
changes against DDP's defaults, on 2 gloo CPU processes.

The model is shaped like the ranker's item side: an item table of ``--items`` rows (dense or
``sparse=True``), a constant buffer of the same rows (the ranker keeps its code / dense tables as
buffers), and a small MLP; each step reads ``--batch`` random rows. Timed, per step:

* dense table: DDP with its default per-forward buffer sync (the named reference) against
  ``data_parallel`` (buffers synced once, at the wrap);
* sparse table: DDP, which sends the sparse gradient through gloo's sparse all-reduce (the
  reference), against ``data_parallel``'s ``all_reduce_gradients`` (coalesced rows all-gathered
  with dense collectives).

Run: ``python benchmarks/bench_ddp.py`` (under a minute on 2 cores), or e.g. ``--items 200000``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class ItemSide(torch.nn.Module):
    def __init__(self, items: int, dim: int, sparse: bool) -> None:
        super().__init__()
        self.item = torch.nn.Embedding(items, dim, sparse=sparse)
        self.register_buffer("codes", torch.randn(items, dim), persistent=False)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(2 * dim, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.item(rows), self.codes[rows]], 1)).square().mean()


def _step_ms(rank: int, store: str, args: argparse.Namespace, sparse: bool, qarm_wrap: bool, out: dict) -> None:
    from qarm.distributed import data_parallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = ItemSide(args.items, args.dim, sparse)
    if qarm_wrap:
        net, sync = data_parallel(model, torch.device("cpu"))
    else:
        net, sync = torch.nn.parallel.DistributedDataParallel(model), (lambda: None)
    gen = torch.Generator().manual_seed(rank)
    batches = [torch.randint(0, args.items, (args.batch,), generator=gen) for _ in range(args.steps + 2)]
    for i, rows in enumerate(batches):
        if i == 2:                                  # two warm-up steps
            dist.barrier()
            t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        net(rows).backward()
        sync()
    dist.barrier()
    if rank == 0:
        out["ms"] = (time.perf_counter() - t0) / args.steps * 1000
    dist.destroy_process_group()


def _worker(rank: int, store: str, args: argparse.Namespace, sparse: bool, qarm_wrap: bool, result: str) -> None:
    out: dict = {}
    _step_ms(rank, store, args, sparse, qarm_wrap, out)
    if rank == 0:
        with open(result, "w") as f:
            f.write(str(out["ms"]))


def timed(args: argparse.Namespace, sparse: bool, qarm_wrap: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store, result = os.path.join(tmp, "store"), os.path.join(tmp, "ms")
        mp.spawn(_worker, args=(store, args, sparse, qarm_wrap, result), nprocs=2)
        with open(result) as f:
            return float(f.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    print(f"2 gloo processes, 1 thread each; items {args.items:,} x dim {args.dim}, batch {args.batch}, "
          f"{args.steps} timed steps (forward, backward, gradient sync; no optimizer)")
    for sparse, reference in ((False, "DDP, buffers synced at every forward"),
                              (True, "DDP, gloo sparse all-reduce")):
        ref = timed(args, sparse, qarm_wrap=False)
        ours = timed(args, sparse, qarm_wrap=True)
        table = "sparse" if sparse else "dense"
        print(f"{table:6s} table: {reference}: {ref:8.1f} ms/step | data_parallel: {ours:8.1f} ms/step | "
              f"ratio {ref / ours:6.1f}x")


if __name__ == "__main__":
    main()
