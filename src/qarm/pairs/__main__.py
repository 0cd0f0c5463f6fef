"""Distributed ``pairs`` stage: ``torchrun --nproc_per_node N -m qarm.pairs CONFIG --out RUN [--set k=v]``.

Every rank joins one process group (NCCL on GPUs, gloo on CPU, ``qarm.distributed``) and trains
the U2I two-tower on its shard of every batch (DDP averages the gradients). Rank 0 runs the stage
through the runner (manifest, metrics, artifacts, trigger mining, Swing); the other ranks stop after
training. Without ``torchrun`` (no ``WORLD_SIZE``) this is the plain stage.
"""

from __future__ import annotations

import sys

from qarm.runner import distributed_stage_main


def main(argv: list[str] | None = None) -> int:
    return distributed_stage_main("pairs", argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
