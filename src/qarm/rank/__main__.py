"""Distributed training entry: ``torchrun --nproc_per_node 2 -m qarm.rank CONFIG --out RUN [--set k=v]``.

Every rank runs the ``train`` stage (DDP: gloo on CPU, NCCL on CUDA, per ``rank.device``); rank 0 goes through the runner, so the
manifest and metrics.json are written once, the other ranks call the stage function directly.
"""

from __future__ import annotations

import argparse
import os
import sys

from qarm.errors import QarmError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qarm.rank", description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--out", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    from qarm.config import load_config
    from qarm.rank.stage import run_train
    from qarm.runner import STAGE_BY_NAME, RunDir, is_fresh, run_stages

    try:
        cfg = load_config(args.config, args.overrides)
        rank = int(os.environ.get("RANK", "0"))
        if rank == 0:
            run_stages(cfg, args.out, stages=["train"], force=args.force)
        else:
            run = RunDir(args.out)
            if args.force or not is_fresh(cfg, run, STAGE_BY_NAME["train"]):
                run_train(cfg, run)
    except QarmError as exc:
        print(f"qarm.rank: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
