"""Distributed ``align`` stage: ``torchrun --nproc_per_node N -m qarm.align CONFIG --out RUN [--set k=v]``.

Every rank joins one process group through ``qarm.distributed.init_distributed``: the backend
follows ``align.device`` (NCCL when it resolves to CUDA, gloo on CPU, whatever else is installed). Rank 0 runs the stage through
the runner (manifest, metrics, artifacts); the other ranks run ``run_align`` alongside it, training
on their shard of every batch. Without ``torchrun`` (no ``WORLD_SIZE``) this is the plain stage.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch.distributed as dist

from qarm.errors import QarmError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qarm.align", description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    from qarm.align.stage import run_align
    from qarm.config import load_config
    from qarm.distributed import init_distributed, resolve_device
    from qarm.runner import STAGE_BY_NAME, RunDir, is_fresh, run_stages

    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        cfg = load_config(args.config, args.overrides)
        if world > 1:
            init_distributed(resolve_device(cfg.align.device, "align.device"))
        rank = dist.get_rank() if world > 1 else 0
        # every rank must agree on skipping, or the others would wait for a rank 0 that never trains
        skip = [rank == 0 and not args.force and is_fresh(cfg, RunDir(args.out), STAGE_BY_NAME["align"])]
        if world > 1:
            dist.broadcast_object_list(skip, src=0)
        if skip[0]:
            if rank == 0:
                print("[align] up to date (config and inputs unchanged); skipped")
        elif rank == 0:
            run_stages(cfg, args.out, stages=["align"], force=True)
        else:
            run_align(cfg, RunDir(args.out))
        return 0
    except QarmError as exc:
        print(f"qarm align: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
