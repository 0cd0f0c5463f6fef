"""Distributed ``pairs`` stage: ``torchrun --nproc_per_node N -m qarm.pairs CONFIG --out RUN [--set k=v]``.

Every rank joins one process group (NCCL on GPUs, gloo on CPU, ``qarm.distributed``) and trains
the U2I two-tower on its shard of every batch (DDP averages the gradients). Rank 0 runs the stage
through the runner (manifest, metrics, artifacts, trigger mining, Swing); the other ranks stop after
training. Without ``torchrun`` (no ``WORLD_SIZE``) this is the plain stage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch.distributed as dist

from qarm.distributed import init_distributed, resolve_device, world
from qarm.errors import QarmError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qarm.pairs", description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    from qarm.config import load_config
    from qarm.pairs.stage import run_pairs
    from qarm.runner import STAGE_BY_NAME, RunDir, is_fresh, run_stages

    try:
        cfg = load_config(args.config, args.overrides)
        init_distributed(resolve_device(cfg.pairs.device, "pairs.device"))
        rank, size = world()
        # every rank must agree on skipping, or the others would wait for a rank 0 that never trains
        skip = [rank == 0 and not args.force and is_fresh(cfg, RunDir(args.out), STAGE_BY_NAME["pairs"])]
        if size > 1:
            dist.broadcast_object_list(skip, src=0)
        if skip[0]:
            if rank == 0:
                print("[pairs] up to date (config and inputs unchanged); skipped")
        elif rank == 0:
            run_stages(cfg, args.out, stages=["pairs"], force=True)
        else:
            run_pairs(cfg, RunDir(args.out))
        return 0
    except QarmError as exc:
        print(f"qarm pairs: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
