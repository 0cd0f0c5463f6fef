"""Distributed training entry: ``torchrun --nproc_per_node 2 -m qarm.rank CONFIG --out RUN [--set k=v]``.

Every rank runs the ``train`` stage (DDP: gloo on CPU, NCCL on CUDA, per ``rank.device``); rank 0 goes
through the runner, so the manifest and metrics.json are written once, the other ranks call the stage
function directly (``qarm.runner.distributed_stage_main``, as ``qarm.pairs`` and ``qarm.align`` do).
"""

from __future__ import annotations

import sys

from qarm.runner import distributed_stage_main


def main(argv: list[str] | None = None) -> int:
    return distributed_stage_main("train", argv, __doc__.splitlines()[0], module="rank")


if __name__ == "__main__":
    sys.exit(main())
