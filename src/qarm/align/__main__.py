"""Distributed ``align`` stage: ``torchrun --nproc_per_node N -m qarm.align CONFIG --out RUN [--set k=v]``.

Every rank joins one process group through ``qarm.distributed.init_distributed``: the backend
follows ``align.device`` (NCCL when it resolves to CUDA, gloo on CPU, whatever else is installed). Rank 0 runs the stage through
the runner (manifest, metrics, artifacts); the other ranks run ``run_align`` alongside it, training
on their shard of every batch. Without ``torchrun`` (no ``WORLD_SIZE``) this is the plain stage.
"""

from __future__ import annotations

import sys

from qarm.runner import distributed_stage_main


def main(argv: list[str] | None = None) -> int:
    return distributed_stage_main("align", argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
