"""The ``align`` stage: fine-tune the multi-modal encoder on mined pairs; export raw and aligned embeddings.

Reads items.parquet (content), pairs.parquet (training pairs), events.parquet and
pairs/u2i_item_emb.npy (valid-split pairs for evaluation only). Writes emb_raw.npy and
emb_aligned.npy for ALL items (cold and held-out included) in items.parquet order, and align/:
``cache/`` (frozen tower features, reused by later runs), ``checkpoint.pt`` (each epoch; a rerun
resumes from it), ``encoder.pt`` (``qarm.align.encoder.load_item_encoder``).

Under ``torchrun`` (``python -m qarm.align``) every rank trains on its shard of each batch; rank 0
extracts the frozen features first (the others then read its cache) and alone writes artifacts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from qarm.align.config import AlignConfig
from qarm.align.encoder import (
    ItemEncoder,
    build_model,
    load_towers,
    tower_keys,
    tower_spec,
)
from qarm.align.evaluate import business_agreement, recall_at_k, valid_pairs
from qarm.align.given import GIVEN, load_given
from qarm.align.inputs import ItemContent, build_store, read_content
from qarm.align.train import AlignTrainer, configure_towers, embed_rows
from qarm.blocks import query_cap
from qarm.config import Config
from qarm.distributed import check_device, leave_process_group, resolve_device, world
from qarm.errors import ConfigError, DataError
from qarm.io import path_sha256, read_npy, read_parquet, write_npy
from qarm.lookup import IdIndex
from qarm.runner import RunDir
from qarm.sample import sample_rows


def check_config(ac: AlignConfig) -> None:
    for name in ("dim", "hidden", "epochs", "batch_size", "image_size", "text_max_length", "n_mels",
                 "encode_batch_size"):
        if getattr(ac, name) < 1:
            raise ConfigError(f"align.{name}: must be at least 1, got {getattr(ac, name)}")
    if ac.fusion == "transformer" and ac.hidden % 4:
        raise ConfigError(f"align.hidden: the transformer fusion has 4 heads, so hidden must be a multiple of 4, "
                          f"got {ac.hidden}")
    if not 0.0 <= ac.modality_dropout < 1.0:
        raise ConfigError(f"align.modality_dropout: must be in [0, 1), got {ac.modality_dropout}")
    if ac.temperature <= 0:
        raise ConfigError(f"align.temperature: must be positive, got {ac.temperature}")
    if ac.image_size % 32 and not ac.joint_model:
        raise ConfigError(f"align.image_size: the CNN towers downsample 32x, use a multiple of 32, got {ac.image_size}")
    check_device(ac.device, "align.device")
    if ac.content_weight < 0:
        raise ConfigError(f"align.content_weight: must be >= 0, got {ac.content_weight}")
    if ac.content_temperature <= 0:
        raise ConfigError(f"align.content_temperature: must be positive, got {ac.content_temperature}")
    if ac.item_embeddings and ac.mode != "head":
        raise ConfigError(f"align.mode={ac.mode!r}: with align.item_embeddings there is no tower to fine-tune; "
                          "use mode head")
    bad = {k: v for k, v in ac.source_weights.items() if v < 0}
    if bad:
        raise ConfigError(f"align.source_weights: weights must be >= 0, got {bad}")


def pair_rows(pairs: pd.DataFrame, item_ids: np.ndarray, source_weights: dict[str, float], file: str
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """(trigger rows, target rows, weights float32, counts) of pairs.parquet; ids must be catalogue items.

    A source missing from ``source_weights`` weighs 1; weight-0 pairs are dropped (counted)."""
    for col in ("trigger_id", "target_id", "source"):
        if col not in pairs.columns:
            raise DataError(f"missing column; has {', '.join(map(str, pairs.columns))}", file=file, column=col)
    rows = []
    index = IdIndex(item_ids, assume_sorted=True)
    for col in ("trigger_id", "target_id"):
        ids = pairs[col].to_numpy(dtype=np.int64)
        pos, found = index.find(ids)
        bad = np.flatnonzero(~found)
        if len(bad):
            raise DataError(f"item id {int(ids[bad[0]])} is not in items.parquet ({len(bad)} such rows); "
                            "rerun the pairs stage on these items", file=file, row=int(bad[0]), column=col)
        rows.append(pos.astype(np.int64))
    source = pairs["source"].astype(str).to_numpy()
    weights = np.array([source_weights.get(s, 1.0) for s in source], dtype=np.float32)
    keep = weights > 0
    counts = {f"n_pairs_{s}": int((source == s).sum()) for s in sorted(set(source))}
    counts["n_pairs_zero_weight"] = int((~keep).sum())
    return rows[0][keep], rows[1][keep], weights[keep], counts


def run_align(cfg: Config, run: RunDir) -> dict:
    ac = cfg.align
    check_config(ac)
    device = resolve_device(ac.device, "align.device")
    rank, world_size = world()
    items, events = run.items(), run.events()
    pairs_file = run.require("pairs.parquet", "pairs")
    pairs = read_parquet(pairs_file)
    item_ids = items["item_id"].to_numpy(dtype=np.int64)
    align_dir = run.subdir("align")
    trigger, target, weights, pair_counts = pair_rows(pairs, item_ids, ac.source_weights, str(pairs_file))
    if ac.max_pairs and len(trigger) > ac.max_pairs:
        pick = sample_rows(len(trigger), ac.max_pairs, cfg.seed)
        trigger, target, weights = trigger[pick], target[pick], weights[pick]
    if len(trigger) < 2:
        raise DataError(f"{len(trigger)} usable pairs: contrastive alignment needs at least 2", file=str(pairs_file))

    t0 = time.perf_counter()
    spec = tower_spec(ac)
    raw_towers, image_size = load_towers(spec)
    given = None
    if spec["given"]:  # the user's own item vectors: the only modality, no pretrained tower runs
        given = load_given(spec["given"], items, ac.item_embeddings)
        content = ItemContent([""] * len(items), [None] * len(items), [None] * len(items))
        modalities = [GIVEN]
    else:
        content = read_content(items, file=str(run / "items.parquet"))
        modalities = [m for m in ("text", "image") if m in raw_towers]
        if ac.use_audio and any(p is not None for p in content.audios):
            modalities.append("audio")
    if not modalities:
        raise ConfigError("align: no modality to encode: set align.text_model, align.image_model or "
                          "align.joint_model (and align.use_audio for items with audio)")
    live_towers, peft_model = configure_towers(
        {m: copy.deepcopy(raw_towers[m]) for m in raw_towers if ac.mode != "head" and m in modalities},
        ac.mode, ac.unfreeze_blocks, ac.lora_r, ac.lora_alpha, ac.lora_target_modules)
    live = set(live_towers)

    def store_now():
        return build_store(content, raw_towers, modalities, live, image_size,
                           (ac.audio_sample_rate, ac.audio_seconds, ac.n_mels), ac.encode_batch_size,
                           align_dir / "cache", tower_keys(spec, image_size), progress=rank == 0, given=given)

    store = store_now() if rank == 0 else None
    if world_size > 1:
        dist.barrier()  # rank 0 has written the feature cache; the other ranks read it
    store = store or store_now()
    feature_s = time.perf_counter() - t0

    in_dims = {m: (ac.n_mels if m == "audio" else store.feats[m].shape[1] if m == GIVEN else raw_towers[m].out_dim)
               for m in modalities}
    spec.update({"modalities": modalities, "in_dims": in_dims, "live": sorted(live), "hidden": ac.hidden,
                 "dim": ac.dim, "fusion": ac.fusion, "modality_dropout": ac.modality_dropout,
                 "dropout": ac.dropout, "mode": ac.mode})
    torch.manual_seed(cfg.seed)
    model = build_model(spec, in_dims, live_towers).to(device)

    align_key = {k: v for k, v in cfg.to_dict()["align"].items() if k != "device"}  # resumable on any device
    key = hashlib.sha256(json.dumps({"align": align_key, "seed": cfg.seed,
                                     "pairs": path_sha256(pairs_file),
                                     "items": path_sha256(run / "items.parquet")}, sort_keys=True).encode()).hexdigest()
    t1 = time.perf_counter()
    trainer = AlignTrainer(ac.epochs, ac.batch_size, ac.lr, ac.tower_lr, ac.weight_decay, ac.temperature,
                           ac.learnable_temperature, seed=cfg.seed, progress=True, content_weight=ac.content_weight,
                           content_temperature=ac.content_temperature, device=device)
    trainer.fit(model, store, trigger, target, weights, item_ids, checkpoint=align_dir / "checkpoint.pt",
                checkpoint_key=key)
    train_s = time.perf_counter() - t1
    if peft_model is not None:
        peft_model.merge_and_unload()  # LoRA folded into the text tower's weights: a plain model to save
    leave_process_group()   # the collective part ends here; rank 0 embeds, evaluates and writes
    if rank != 0:
        return {}

    aligned = embed_rows(model, store, progress=True, device=device)
    model.to("cpu")  # encoder.pt loads anywhere
    raw = store.raw
    write_npy(run / "emb_raw.npy", raw)
    write_npy(run / "emb_aligned.npy", aligned)
    ItemEncoder(spec, model, raw_towers, image_size).save(align_dir / "encoder.pt")

    metrics: dict = {"mode": ac.mode, "dim": int(aligned.shape[1]), "raw_dim": int(raw.shape[1]),
                     "epochs": ac.epochs, "epochs_resumed": ac.epochs - trainer.epochs_run_,
                     "modalities": modalities, "fusion": ac.fusion, "n_items": len(items),
                     "n_train_pairs": int(len(trigger)), **pair_counts,
                     "final_loss": trainer.loss_history_[-1] if trainer.loss_history_ else float("nan"),
                     "loss_history": [round(x, 5) for x in trainer.loss_history_],
                     "temperature": trainer.temperature_, "feature_s": round(feature_s, 2),
                     "train_s": round(train_s, 2), "train_pairs_per_s": round(trainer.pairs_per_s_, 1),
                     "world_size": world_size, "device": str(device), "content_weight": ac.content_weight}
    metrics.update({"corrupt_image": 0, "corrupt_audio": 0})  # reported even when a modality is off
    metrics.update({k: int(v) for k, v in store.counts.items()})
    metrics["missing_text"] = metrics.pop("empty_text", 0)
    metrics.update(evaluate(cfg, run, items, events, raw, aligned, ac.eval_ks))
    return metrics


def evaluate(cfg: Config, run: RunDir, items: pd.DataFrame, events: pd.DataFrame, raw: np.ndarray,
             aligned: np.ndarray, ks: list[int]) -> dict:
    """Recall@k on valid-split pairs (all, and cold targets: no train events), and business NMI."""
    u2i = read_npy(run.require("pairs/u2i_item_emb.npy", "pairs"))
    trig, targ = valid_pairs(items, events, u2i, cfg.pairs.label, cfg.pairs.trigger_window,
                             str(run / "items.parquet"), str(run / "events.parquet"))
    out: dict = {"n_valid_pairs": int(len(trig))}
    cold = items["train_count"].to_numpy()[targ] == 0 if "train_count" in items.columns else np.zeros(len(targ), bool)
    out["n_valid_pairs_cold_target"] = int(cold.sum())
    max_pairs = query_cap(cfg.align.eval_max_pairs, len(items), cfg.align.eval_max_scores)
    scored = sample_rows(len(trig), max_pairs, cfg.seed)
    cold_rows = np.flatnonzero(cold)
    cold_rows = cold_rows[sample_rows(len(cold_rows), max_pairs, cfg.seed)]
    out["n_valid_pairs_scored"] = int(len(scored))
    for name, emb in (("raw", raw), ("aligned", aligned)):
        for k, v in recall_at_k(emb, trig[scored], targ[scored], ks).items():
            out[f"{name}.recall@{k}"] = v
        if len(cold_rows):
            for k, v in recall_at_k(emb, trig[cold_rows], targ[cold_rows], ks).items():
                out[f"{name}.cold_recall@{k}"] = v
    truth_path = run / "data" / "ground_truth.parquet"
    if truth_path.exists():
        truth = read_parquet(truth_path).set_index("item_id")["business"]
        business = truth.reindex(items["item_id"]).fillna(-1).to_numpy(dtype=np.int64)
        for name, emb in (("raw", raw), ("aligned", aligned)):
            for k, v in business_agreement(emb, business, cfg.seed, max_queries=query_cap(cfg.align.eval_max_items, len(items),
                                                                                cfg.align.eval_max_scores)).items():
                out[f"{name}.{k}"] = v
    return out
