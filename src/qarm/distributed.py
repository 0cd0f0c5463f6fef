"""Devices and torch.distributed set-up, shared by every training and encoding stage.

``device: auto | cpu | cuda | cuda:N`` in a config resolves through ``resolve_device``; the process
group backend follows the device (NCCL for CUDA, gloo for CPU), and under ``torchrun`` each rank
takes the GPU named by ``LOCAL_RANK``.
"""

from __future__ import annotations

import inspect
import os
import re
from typing import Callable

import torch
import torch.distributed as dist

from qarm.errors import ConfigError

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_DDP_ARGS = set(inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters)


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


def leave_process_group() -> None:
    """Every rank: wait for the others, then leave the process group together. Call it where a
    stage's collective work ends and rank 0 goes on alone: a rank that tears its group down while
    a peer still holds it can abort in gloo's destructor ("terminate called without an active
    exception", a CI failure of the 2-process pairs test). A no-op outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(n: int) -> slice:
    """This rank's contiguous share of ``n`` rows: rank r of w reads rows [r*n//w, (r+1)*n//w)."""
    rank, size = world()
    return slice(rank * n // size, (rank + 1) * n // size)


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the process group, dense and sparse alike, with
    dense collectives only.

    The backends' own sparse all-reduce is not relied on: NCCL's is a prototype (pytorch#22400 is
    still open) and gloo's is 8x slower (``benchmarks/bench_ddp.py``; a rank also aborted in that
    path in one CI run, two CPU ranks, ``rank.sparse_ids``). So a sparse gradient is coalesced, its rows
    all-gathered (each rank's padded to the largest count) and summed in rank order: O(rows a step
    touched x world size), never O(table rows). The dense gradients travel as one flat buffer. A
    parameter with no gradient on any rank keeps none (as after a single-process step); one with a
    gradient on some ranks only counts as zero on the others. Every rank ends with the same bits.
    A no-op outside torch.distributed.
    """
    _, size = world()
    if size == 1 or not params:
        return
    device = params[0].device
    # per parameter, summed over ranks in one collective: how many have a gradient, how many a sparse one
    flags = torch.tensor([[p.grad is not None, p.grad is not None and p.grad.is_sparse] for p in params],
                         dtype=torch.int32, device=device)
    dist.all_reduce(flags)
    dense = [p for p, (has, is_sparse) in zip(params, flags.tolist()) if has and not is_sparse]
    sparse = [p for p, (has, is_sparse) in zip(params, flags.tolist()) if is_sparse]
    for dtype in dict.fromkeys(p.dtype for p in dense):    # one flat buffer per dtype
        group = [p for p in dense if p.dtype == dtype]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
        dist.all_reduce(flat)
        flat /= size
        offset = 0
        for p in group:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
    if sparse:
        _all_reduce_sparse(sparse, size)


def _all_reduce_sparse(params: list[torch.nn.Parameter], size: int) -> None:
    device = params[0].device
    grads = [p.grad.coalesce() if p.grad is not None else
             torch.sparse_coo_tensor(torch.zeros((1, 0), dtype=torch.int64, device=device),
                                     p.new_zeros((0, *p.shape[1:])), p.shape).coalesce()
             for p in params]
    counts = torch.tensor([g.indices().shape[1] for g in grads], dtype=torch.int64, device=device)
    gathered = [torch.zeros_like(counts) for _ in range(size)]
    dist.all_gather(gathered, counts)
    per_rank = torch.stack(gathered).tolist()          # [world][table] rows each rank touched
    for t, (p, g) in enumerate(zip(params, grads)):
        most = max(1, max(c[t] for c in per_rank))     # gloo and NCCL want equal, non-empty shapes
        rows = torch.zeros(most, dtype=torch.int64, device=device)
        values = p.new_zeros((most, *p.shape[1:]))
        n = g.indices().shape[1]
        rows[:n], values[:n] = g.indices()[0], g.values()
        all_rows = [torch.empty_like(rows) for _ in range(size)]
        all_values = [torch.empty_like(values) for _ in range(size)]
        dist.all_gather(all_rows, rows)
        dist.all_gather(all_values, values)
        rows = torch.cat([r[:c[t]] for r, c in zip(all_rows, per_rank)])
        values = torch.cat([v[:c[t]] for v, c in zip(all_values, per_rank)]) / size
        # rows come from the ranks' own coalesced gradients: in range by construction
        p.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, p.shape, check_invariants=False).coalesce()


def data_parallel(model: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False
                  ) -> tuple[torch.nn.Module, Callable[[], None]]:
    """Wrap ``model`` for the process group: returns (the module to call, a function to call after
    ``backward``). Without sparse embeddings: DDP (bucketed all-reduce overlapped with backward)
    and a no-op; buffers are synced once, not at every forward. With ``sparse=True`` embeddings: the model itself, its parameters broadcast from
    rank 0 once, and ``all_reduce_gradients`` after each backward (DDP would send the sparse
    gradients through the backend's sparse all-reduce). Outside torch.distributed: the model and
    a no-op."""
    _, size = world()
    if size == 1:
        return model, lambda: None
    if not any(isinstance(m, torch.nn.Embedding) and m.sparse for m in model.modules()):
        # DDP would otherwise re-send every buffer from rank 0 at each forward, and the ranker's
        # buffers are its item tables (ids, codes, dense vectors: O(catalogue); benchmarks/bench_ddp.py).
        # Every buffer here is constant data, the same on every rank (no BatchNorm trains); the
        # constructor still syncs them once.
        no_forward_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_ARGS
                           else {"broadcast_buffers": False})     # older torch: only this flag
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters, **no_forward_sync)
        return ddp, lambda: None
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t, src=0)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, lambda: all_reduce_gradients(params)
