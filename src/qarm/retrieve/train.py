"""The training loop shared by the generative retriever and SASRec: same budget, same stopping rule.

Each epoch draws its shuffle from (seed, epoch) only, trains on index slices of precomputed tensors,
scores the valid users (Recall@10) and checkpoints model, optimiser and early-stopping state
atomically. A killed run resumes from the last finished epoch and ends with the same weights.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from qarm.io import resume_training, save_torch


@dataclass
class FitLog:
    best_epoch: int = 0
    best_valid: float = -math.inf
    epochs_run: int = 0
    resumed_from_epoch: int = 0
    train_seconds: float = 0.0
    log: list[dict[str, Any]] = field(default_factory=list)


def fit_loop(model: torch.nn.Module, n: int, batch_loss: Callable[[torch.Tensor], torch.Tensor],
             valid_score: Callable[[], float], *, epochs: int, patience: int, batch_size: int, lr: float,
             weight_decay: float, seed: int, ckpt_path: Path | None, fingerprint: str,
             desc: str = "retrieve", verbose: bool = True) -> FitLog:
    """Adam over ``n`` training samples in shuffled batches; ``batch_loss(idx)`` returns the mean loss of
    samples ``idx`` (int64 [b]). Keeps the weights of the best ``valid_score()`` epoch (loaded into
    ``model`` on return); stops after ``patience`` epochs without improvement (0 = never)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    state: dict[str, Any] = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "bad": 0, "log": [], "seconds": 0.0,
                             "best_state": copy.deepcopy(model.state_dict())}
    state, resumed = resume_training(ckpt_path, fingerprint, model, opt, state)
    while state["epoch"] < epochs and not (patience > 0 and state["bad"] >= patience):
        epoch = state["epoch"]
        gen = torch.Generator().manual_seed(seed * 7919 + epoch)
        perm = torch.randperm(n, generator=gen)
        torch.manual_seed(seed * 7919 + epoch)  # dropout draws from (seed, epoch) too
        model.train()
        t0, total, steps = time.perf_counter(), 0.0, 0
        bar = tqdm(range(0, n, batch_size), desc=f"{desc} epoch {epoch + 1}", leave=False, disable=not verbose,
                   mininterval=2.0)
        for s in bar:
            loss = batch_loss(perm[s:s + batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += float(loss.detach())
            steps += 1
        seconds = time.perf_counter() - t0
        model.eval()
        v = float(valid_score())
        if v > state["best"]:
            state.update(best=v, best_epoch=epoch + 1, bad=0,
                         best_state={k: t.detach().cpu().clone() for k, t in model.state_dict().items()})
        else:
            state["bad"] += 1
        state["log"].append({"epoch": epoch + 1, "train_loss": total / max(steps, 1), "valid_recall@10": v,
                             "seconds": round(seconds, 3)})
        state["seconds"] += seconds
        state["epoch"] = epoch + 1
        if ckpt_path is not None:
            save_torch(ckpt_path, {"fingerprint": fingerprint, "model": model.state_dict(),
                                   "optimizer": opt.state_dict(), "state": state})
    model.load_state_dict(state["best_state"])
    model.eval()
    return FitLog(state["best_epoch"], state["best"], state["epoch"], resumed, state["seconds"], state["log"])
