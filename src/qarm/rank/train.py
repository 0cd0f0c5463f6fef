"""Fast training loop: tensors precomputed once, batches are index slices (no per-sample Dataset).

Checkpoints each epoch (model, optimiser, early-stopping state); a run killed at any moment resumes
from the last epoch boundary and ends with the same weights, because each epoch's shuffle is drawn
from (seed, epoch) and nothing else is random. Under ``torchrun`` each rank takes its stripe of
every global batch; the gradients are averaged by DDP, or, with sparse embedding tables, by
``qarm.distributed.all_reduce_gradients``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from qarm.distributed import data_parallel, world
from qarm.io import resume_training, save_torch
from qarm.optim import adam_with_sparse_tables
from qarm.rank.config import RankConfig
from qarm.rank.features import EventArrays, FeatureSpec
from qarm.rank.metrics import auc
from qarm.rank.model import RankModel


class TensorData:
    """One variant's model inputs for a set of events as tensors; ``batch(idx)`` slices them all.

    Histories stay CSR-style (``Sequences``: shared sorted positives + per-event offsets) and are
    materialised per batch, so memory is O(events + positives), not O(events x history length).
    """

    def __init__(self, ev: EventArrays, specs: list[FeatureSpec], device: torch.device | str = "cpu") -> None:
        counts = [s.name for s in specs if s.kind == "count"]
        self.device = torch.device(device)
        def put(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

        self.tensors: dict[str, torch.Tensor] = {
            "user": put(ev.user), "target": put(ev.target), "labels": put(ev.labels)}
        if counts:
            self.tensors["counts"] = put(np.stack([ev.counts[c] for c in counts], 1))
        # sequence name -> (sorted positives, start, end, length)
        self.seqs: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = {}
        for s in specs:
            if s.kind != "sequence":
                continue
            seq = ev.hist if s.name == "history" else ev.sims.get(s.name)
            if seq is None:
                raise KeyError(f"no events sequence for feature {s.name!r} (have: history, {', '.join(ev.sims)})")
            values = put(np.r_[np.zeros(1, seq.values.dtype), seq.values])  # slot 0 = padding
            self.seqs[s.name] = (values, put(seq.start), put(seq.end), s.vocab)

    def __len__(self) -> int:
        return len(self.tensors["target"])

    def batch(self, idx: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        if isinstance(idx, torch.Tensor):
            idx = idx.to(self.device)
        out = {k: v[idx] for k, v in self.tensors.items()}
        if "counts" in out:
            out["counts"] = out["counts"].long()
        for name, (values, start, end, n) in self.seqs.items():
            e = end[idx].long()
            pos = e.unsqueeze(1) - n + torch.arange(n, device=e.device)   # [B, n], oldest first
            # positions before the group's start read slot 0 (padding); positives shift by one
            pos = torch.where(pos >= start[idx].long().unsqueeze(1), pos + 1, 0)
            out[name] = values[pos].long()
        return out


@torch.inference_mode()
def predict(model: torch.nn.Module, data: TensorData, batch_size: int = 8192) -> np.ndarray:
    """Probabilities float32 [E, n_tasks]."""
    model.eval()
    out = [torch.sigmoid(model(data.batch(slice(s, s + batch_size))).float()).cpu()
           for s in range(0, len(data), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.n_tasks), np.float32)


def valid_score(model: torch.nn.Module, data: TensorData, batch_size: int) -> float:
    """Mean AUC over tasks on ``data`` (the early-stopping criterion)."""
    p = predict(model, data, batch_size)
    y = data.tensors["labels"].cpu().numpy()
    scores = [auc(y[:, t], p[:, t]) for t in range(y.shape[1])]
    scores = [s for s in scores if not math.isnan(s)]
    return float(np.mean(scores)) if scores else float("nan")


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_valid_auc: float
    log: list[dict[str, Any]] = field(default_factory=list)
    train_samples: int = 0
    train_seconds: float = 0.0
    resumed_from_epoch: int = 0


def fit(model: RankModel, train: TensorData, valid: TensorData, cfg: RankConfig, seed: int,
        ckpt_path: Path, fingerprint: str, desc: str = "train") -> FitResult:
    """Train with early stopping on the valid mean AUC; resume from ``ckpt_path`` when its
    fingerprint matches. Returns the best epoch's weights and the training log."""
    rank, size = world()
    tables = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
    opt = adam_with_sparse_tables(list(model.parameters()), tables, cfg.lr, cfg.weight_decay)
    state: dict[str, Any] = {"epoch": 0, "best_valid_auc": -math.inf, "best_epoch": -1, "bad_epochs": 0,
                             "best_state": copy.deepcopy(model.state_dict()), "log": [],
                             "train_samples": 0, "train_seconds": 0.0}
    state, resumed = resume_training(ckpt_path, fingerprint, model, opt, state)
    device = next(model.parameters()).device
    net, sync_gradients = data_parallel(model, device)
    n, bs = len(train), cfg.batch_size
    while state["epoch"] < cfg.epochs and not (cfg.patience > 0 and state["bad_epochs"] >= cfg.patience):
        epoch = state["epoch"]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        torch.manual_seed(seed * 7919 + epoch)  # anything stochastic in the model draws from (seed, epoch)
        model.train()
        t0, total, steps = time.perf_counter(), 0.0, 0
        bar = tqdm(range(0, n - size + 1, bs), desc=f"{desc} epoch {epoch + 1}", leave=False,
                   disable=rank != 0, mininterval=2.0)
        for s in bar:
            b = train.batch(perm[s:s + bs][rank::size])
            loss = F.binary_cross_entropy_with_logits(net(b), b["labels"])
            if model.penalty is not None:   # rank.embedding_l2
                loss = loss + model.penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sync_gradients()
            opt.step()
            total += loss.detach().item()
            steps += 1
        seconds = time.perf_counter() - t0
        score = torch.tensor([valid_score(model, valid, cfg.eval_batch_size) if rank == 0 else 0.0],
                             dtype=torch.float64)
        if size > 1:
            dist.broadcast(score, src=0)
        v = float(score[0])
        improved = v > state["best_valid_auc"]
        if improved:
            state.update(best_valid_auc=v, best_epoch=epoch, bad_epochs=0,
                         best_state={k: t.detach().clone() for k, t in model.state_dict().items()})
        else:
            state["bad_epochs"] += 1
        state["log"].append({"epoch": epoch + 1, "train_loss": total / max(steps, 1), "valid_auc": v,
                             "seconds": round(seconds, 3)})
        state["train_samples"] += n
        state["train_seconds"] += seconds
        state["epoch"] = epoch + 1
        if rank == 0:
            save_torch(ckpt_path, {"fingerprint": fingerprint, "model": model.state_dict(),
                                   "optimizer": opt.state_dict(), "state": state})
        if size > 1:
            dist.barrier()
    return FitResult(state["best_state"], state["best_epoch"] + 1, state["best_valid_auc"], state["log"],
                     state["train_samples"], state["train_seconds"], resumed)
