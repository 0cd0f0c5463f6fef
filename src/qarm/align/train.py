"""Contrastive alignment on (trigger, target) pairs: symmetric in-batch InfoNCE, DDP-aware, resumable.

Loss: for a global batch of B pairs with embeddings q (triggers) and k (targets),
``logits = q @ k.T / t``; cross-entropy towards the diagonal in both directions, each pair weighted
by its source's weight. False negatives are masked: a column whose item equals the row's positive
item (the same target twice in a batch) or the row's own item (a trigger that is another pair's
target) is not a negative. Under DDP each rank embeds B / world pairs, all-gathers embeddings
*with gradient*, and computes the loss of its own rows against every column; DDP averages the
parameter gradients, which gives exactly the single-process gradient of the whole batch.

Determinism: the pair order of epoch e is ``default_rng([seed, e])`` and torch's RNG (dropout,
modality dropout) is reseeded from (seed, e) at the start of every epoch, so a run resumed from
the checkpoint of epoch e continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from qarm.align.inputs import ItemStore, token_bucket
from qarm.align.model import AlignModel
from qarm.distributed import all_reduce_gradients, data_parallel
from qarm.distributed import world as dist_world
from qarm.errors import ConfigError
from qarm.io import save_torch


def configure_towers(towers: dict[str, nn.Module], mode: str, unfreeze_blocks: int = 1, lora_r: int = 8,
                     lora_alpha: int = 16, lora_targets: list[str] | None = None) -> tuple[dict[str, nn.Module], object]:
    """Freeze / unfreeze the pretrained towers for ``mode``; returns (live towers, peft model or None).

    head: none live (frozen features come from the cache). partial: the top ``unfreeze_blocks``
    blocks (and what follows them) of each tower train. full: every tower weight trains. lora:
    LoRA adapters on the text tower train (peft); the image tower stays frozen and cached.
    """
    for t in towers.values():
        t.requires_grad_(False)
    if mode == "head":
        return {}, None
    if mode == "full":
        for t in towers.values():
            t.requires_grad_(True)
        return dict(towers), None
    if mode == "partial":
        if unfreeze_blocks < 1:
            raise ConfigError(f"align.unfreeze_blocks: partial mode needs at least 1, got {unfreeze_blocks}")
        for t in towers.values():
            for m in t.blocks()[-unfreeze_blocks:] + t.after_blocks():
                m.requires_grad_(True)
        return dict(towers), None
    if mode == "lora":
        if "text" not in towers:
            raise ConfigError("align.mode=lora fine-tunes the text tower, but no text model is configured")
        return {"text": towers["text"]}, apply_lora(towers["text"], lora_r, lora_alpha, lora_targets or [])
    raise ConfigError(f"align.mode: {mode!r} is not one of head, partial, full, lora")


def apply_lora(tower: nn.Module, r: int, alpha: int, targets: list[str]):
    """Inject LoRA adapters into the text tower's HF model (in place); returns the peft model."""
    from peft import LoraConfig, get_peft_model
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS,
    )

    joint = hasattr(tower, "joint")
    base = tower.joint if joint else tower.hf
    model_type = getattr(base.config, "text_config", base.config).model_type if joint else base.config.model_type
    names = targets or DEFAULTS.get(model_type) or DEFAULTS.get(base.config.model_type)
    if not names:
        raise ConfigError(f"align.lora_target_modules: peft has no default LoRA targets for model type "
                          f"{model_type!r}; name the attention projections, e.g. [q_proj, v_proj]")
    target = f".*text_model.*\\.({'|'.join(names)})$" if joint else list(names)
    return get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=target, lora_dropout=0.0,
                                           bias="none"))


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, q_ids: torch.Tensor, k_ids: torch.Tensor,
                     weights: torch.Tensor, logit_scale: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted symmetric InfoNCE of ``rows`` against all B columns.

    q, k: float [B, d] L2-normalised (global batch); q_ids, k_ids: int64 [B] item ids; weights: float [B].
    Returns (sum over rows of weight x loss, sum of weights over rows); the caller divides by the
    global weight sum.
    """
    idx = torch.arange(len(q), device=q.device)[rows]
    eye = torch.zeros(len(idx), len(q), dtype=torch.bool, device=q.device)
    eye[torch.arange(len(idx), device=q.device), idx] = True
    # false negatives: same positive item again, or the row's own item, in another column
    mask_qk = ((k_ids[None, :] == k_ids[idx, None]) | (k_ids[None, :] == q_ids[idx, None])) & ~eye
    mask_kq = ((q_ids[None, :] == q_ids[idx, None]) | (q_ids[None, :] == k_ids[idx, None])) & ~eye
    logits_qk = (q[idx] @ k.T * logit_scale).masked_fill(mask_qk, float("-inf"))
    logits_kq = (k[idx] @ q.T * logit_scale).masked_fill(mask_kq, float("-inf"))
    loss = 0.5 * (F.cross_entropy(logits_qk, idx, reduction="none") + F.cross_entropy(logits_kq, idx, reduction="none"))
    w = weights[idx]
    return (loss * w).sum(), w.sum()


def content_loss(e: torch.Tensor, raw: torch.Tensor, rows: slice, temperature: float) -> torch.Tensor:
    """Raw-similarity distillation, summed over ``rows``: KL(P_raw || P_aligned) of each row's in-batch
    similarity distribution (softmax over the other 2B - 1 items of cosine / ``temperature``).

    e: float [N, d] aligned (L2-normalised, with gradient); raw: float [N, d_raw] raw embeddings
    (L2-normalised, no gradient) of the same N items. Keeps the raw content neighbourhoods that
    behaviour pairs say nothing about (cold items have only content). Returns the sum over rows.
    """
    idx = torch.arange(len(e), device=e.device)[rows]
    self_mask = torch.zeros(len(idx), len(e), dtype=torch.bool, device=e.device)
    self_mask[torch.arange(len(idx), device=e.device), idx] = True
    student = F.log_softmax((e[idx] @ e.T / temperature).masked_fill(self_mask, float("-inf")), dim=1)
    teacher = F.softmax((raw[idx] @ raw.T / temperature).masked_fill(self_mask, float("-inf")), dim=1)
    # KL per row; the masked self column has p = 0, so it contributes 0 (not 0 * -inf)
    kl = torch.where(teacher > 0, teacher * (torch.log(teacher.clamp(min=1e-30)) - student), torch.zeros_like(teacher))
    return kl.sum()


def _gather(x: torch.Tensor, world: int) -> torch.Tensor:
    if world == 1:
        return x
    import torch.distributed.nn.functional as dnn

    return torch.cat(dnn.all_gather(x), dim=0)  # keeps the autograd graph to every rank's rows


class AlignTrainer:
    """Trains an ``AlignModel`` on item-row pairs. Learned state: ``loss_history_``, ``temperature_``,
    ``epochs_run_`` (epochs computed by this call; the rest came from the checkpoint), ``pairs_per_s_``.

    ``content_weight`` > 0 adds ``content_loss`` (raw-similarity distillation at
    ``content_temperature``) of the batch's 2B items to the contrastive loss; ``device``: where the
    model and batches live (the caller moves the model there first)."""

    def __init__(self, epochs: int = 10, batch_size: int = 256, lr: float = 1e-3, tower_lr: float = 2e-5,
                 weight_decay: float = 0.01, temperature: float = 0.07, learnable_temperature: bool = True,
                 seed: int = 0, progress: bool = True, content_weight: float = 0.0,
                 content_temperature: float = 0.05, device: torch.device | str = "cpu") -> None:
        self.epochs, self.batch_size, self.lr, self.tower_lr = epochs, batch_size, lr, tower_lr
        self.weight_decay, self.temperature, self.learnable_temperature = weight_decay, temperature, learnable_temperature
        self.seed, self.progress = seed, progress
        self.content_weight, self.content_temperature, self.device = content_weight, content_temperature, device

    def fit(self, model: AlignModel, store: ItemStore, trigger: np.ndarray, target: np.ndarray,
            weights: np.ndarray, item_ids: np.ndarray, checkpoint: Path | None = None,
            checkpoint_key: str = "") -> AlignTrainer:
        """trigger, target: int64 [P] item rows of ``store``; weights: float32 [P]; item_ids: int64 [n]
        (false-negative masking compares ids). Resumes from ``checkpoint`` when its key matches."""
        rank, world = dist_world()
        device = torch.device(self.device)
        live = set(model.towers.keys())
        log_scale = torch.tensor(math.log(1.0 / self.temperature), device=device)
        self.logit_scale_ = nn.Parameter(log_scale, requires_grad=self.learnable_temperature)
        lora_ids = {id(p) for n, p in model.named_parameters() if "lora_" in n}
        tower_params = [p for p in model.towers.parameters() if p.requires_grad and id(p) not in lora_ids]
        tower_ids = {id(p) for p in tower_params}
        head_params = [p for p in model.parameters() if p.requires_grad and id(p) not in tower_ids]
        groups = [{"params": head_params + [self.logit_scale_], "lr": self.lr}]
        if tower_params:
            groups.append({"params": tower_params, "lr": self.tower_lr})
        opt = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        net, sync_gradients = data_parallel(model, device, find_unused_parameters=True)
        self.loss_history_: list[float] = []
        start = 0
        if checkpoint is not None and checkpoint.is_file():
            state = torch.load(checkpoint, map_location=device, weights_only=False)
            if state.get("key") == checkpoint_key:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                with torch.no_grad():
                    self.logit_scale_.copy_(state["logit_scale"])
                self.loss_history_ = list(state["loss_history"])
                start = int(state["epoch"])
        ids = torch.tensor(np.asarray(item_ids, dtype=np.int64), device=device)
        w_all = torch.tensor(np.asarray(weights, dtype=np.float32), device=device)
        raw_all = torch.from_numpy(store.raw) if self.content_weight > 0 else None
        n_pairs, t0, done = len(trigger), time.perf_counter(), 0
        self.epochs_run_ = 0
        for epoch in range(start, self.epochs):
            torch.manual_seed(self.seed * 100_003 + epoch)
            perm = np.random.default_rng([self.seed, epoch]).permutation(n_pairs)
            net.train()
            total, total_w = 0.0, 0.0
            bar = tqdm(range(0, n_pairs, self.batch_size), desc=f"align epoch {epoch + 1}/{self.epochs}",
                       unit="batch", disable=not self.progress or rank != 0, mininterval=2.0)
            for a in bar:
                batch = perm[a:a + self.batch_size]
                batch = batch[: len(batch) // world * world]  # equal shards for all_gather
                if len(batch) < 2:
                    continue
                per = len(batch) // world
                local = batch[rank * per:(rank + 1) * per]
                rows = np.concatenate([trigger[local], target[local]])
                emb = net(to_device(store.batch(rows, live), device))
                q, k = _gather(emb[:per], world), _gather(emb[per:], world)
                q_ids, k_ids = ids[trigger[batch]], ids[target[batch]]
                w = w_all[batch]
                scale = self.logit_scale_.clamp(max=math.log(100.0)).exp()
                mine = slice(rank * per, (rank + 1) * per)
                loss_sum, _ = contrastive_loss(q, k, q_ids, k_ids, w, scale, mine)
                loss = loss_sum * world / w.sum().clamp(min=1e-12)  # DDP averages: global weighted mean
                if raw_all is not None:
                    # the batch's 2B items in global order (triggers then targets); this rank's rows of each half
                    e = torch.cat([q, k])
                    r = raw_all[np.concatenate([trigger[batch], target[batch]])].to(device)
                    c = content_loss(e, r, mine, self.content_temperature) + content_loss(
                        e, r, slice(len(batch) + rank * per, len(batch) + (rank + 1) * per), self.content_temperature)
                    loss = loss + self.content_weight * c * world / (2 * len(batch))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                sync_gradients()
                all_reduce_gradients([self.logit_scale_])  # learnable temperature: not a module weight, not DDP's
                opt.step()
                total += float(loss.detach()) * float(w.sum()) / world
                total_w += float(w.sum())
                done += len(batch)
            epoch_loss = torch.tensor([total, total_w], dtype=torch.float64, device=device)  # NCCL: on the GPU
            if world > 1:
                dist.all_reduce(epoch_loss)
                epoch_loss[1] /= world
            self.loss_history_.append(float(epoch_loss[0].cpu()) / max(float(epoch_loss[1].cpu()), 1e-12))
            self.epochs_run_ += 1
            if checkpoint is not None and rank == 0:
                save_torch(checkpoint, {"key": checkpoint_key, "epoch": epoch + 1, "model": model.state_dict(),
                                        "optimizer": opt.state_dict(), "logit_scale": self.logit_scale_.detach(),
                                        "loss_history": self.loss_history_})
            if world > 1:
                dist.barrier()
        elapsed = time.perf_counter() - t0
        self.pairs_per_s_ = done / elapsed if done else float("nan")
        self.temperature_ = float(1.0 / self.logit_scale_.detach().clamp(max=math.log(100.0)).exp())
        return self


@torch.no_grad()
def embed_rows(model: AlignModel, store: ItemStore, rows: np.ndarray | None = None, batch_size: int = 256,
               progress: bool = False, device: torch.device | str | None = None) -> np.ndarray:
    """Aligned embeddings of ``rows`` (default all) of ``store``: float32 [len(rows), dim], L2-normalised.

    Batch-invariant: every forward pass has exactly ``batch_size`` rows (the last batch is padded
    by repeating its first row) and a live text tower reads rows grouped by their own token bucket
    (``token_bucket``), so a row's bits are the same whether it is encoded alone, in a subset or
    with the whole catalogue (docs/determinism.md).
    """
    rows = np.arange(len(store)) if rows is None else np.asarray(rows)
    if device is None:  # where the model is
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    live = set(model.towers.keys())
    out = np.zeros((len(rows), model.fusion.dim), dtype=np.float32)
    if "text" in live:
        mask = store.tokens["attention_mask"]
        widths = token_bucket(mask[rows].sum(1), mask.shape[1])
    else:
        widths = np.zeros(len(rows), dtype=np.int64)
    batches = [(w, grp[a:a + batch_size]) for w in np.unique(widths) for grp in [np.flatnonzero(widths == w)]
               for a in range(0, len(grp), batch_size)]
    for w, pos in tqdm(batches, desc="encode aligned", unit="batch", disable=not progress):
        r = rows[pos]
        padded = np.concatenate([r, np.full(batch_size - len(r), r[0], dtype=r.dtype)])
        batch = store.batch(padded, live, text_width=int(w) if "text" in live else None)
        out[pos] = model(to_device(batch, device))[:len(r)].float().cpu().numpy()
    return out


def to_device(batch, device: torch.device | str):
    """``ItemStore.batch`` output (nested dicts of tensors) moved to ``device``."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch
