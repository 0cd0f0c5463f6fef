"""Devices and torch.distributed set-up, shared by every training and encoding stage.

``device: auto | cpu | cuda | cuda:N`` in a config resolves through ``resolve_device``; the process
group backend follows the device (NCCL for CUDA, gloo for CPU), and under ``torchrun`` each rank
takes the GPU named by ``LOCAL_RANK``.
"""

from __future__ import annotations

import os
import re

import torch
import torch.distributed as dist

from qarm.errors import ConfigError

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_device(spec: str, where: str = "device") -> None:
    """Raise ConfigError unless ``spec`` is auto, cpu, cuda or cuda:N."""
    if not isinstance(spec, str) or not _DEVICE.match(spec):
        raise ConfigError(f"{where}: {spec!r} is not one of auto, cpu, cuda, cuda:N")


def resolve_device(spec: str = "auto", where: str = "device") -> torch.device:
    """``auto`` -> cuda (this rank's LOCAL_RANK GPU) when available, else cpu. ``cuda`` without a
    GPU is a ConfigError rather than a crash deep inside the first ``.to``."""
    check_device(spec, where)
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{where}: {spec!r} asked for, but torch sees no CUDA device "
                          f"(torch {torch.__version__}); use 'cpu' or 'auto'")
    if spec in ("auto", "cuda"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    index = int(spec.split(":")[1])
    if index >= torch.cuda.device_count():
        raise ConfigError(f"{where}: {spec!r} but only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def backend_for(device: torch.device) -> str:
    """Process-group backend for a device: NCCL on CUDA, gloo on CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device | None = None) -> None:
    """Join the torchrun process group with the backend that fits ``device`` (gloo when None);
    a no-op outside torchrun or when already joined. On CUDA the rank's GPU becomes current."""
    if not launched_by_torchrun() or not dist.is_available() or dist.is_initialized():
        return
    device = device or torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device))


def shard(n: int) -> slice:
    """This rank's contiguous share of ``n`` rows: rank r of w reads rows [r*n//w, (r+1)*n//w)."""
    rank, size = world()
    return slice(rank * n // size, (rank + 1) * n // size)
