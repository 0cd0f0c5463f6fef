"""Which item features carry a trained ranker's score: hide a group at evaluation time, re-score.

A trained model is evaluated again on the test and cold-test events with one group of item
features hidden for every item: ids and codes go to the OOV row (what an unseen id or code
reads), frozen dense vectors to zero (the projection's input then contributes nothing). Nothing
is retrained, so a row says what the *trained* model draws from that group, on warm and on cold
items: a group whose hiding raises cold AUC is one the model uses in a way that does not
transfer to items it never saw. The mean logit shows a shift of the whole score (a cold item
whose codes read "unpopular" is scored low as a block).

Cost: one evaluation pass per group over the test and cold-test events (no training).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qarm.config import Config, load_run_config
from qarm.errors import QarmError, StageInputError
from qarm.rank.features import UNKNOWN, FeatureSpec
from qarm.rank.metrics import auc
from qarm.rank.model import RankModel
from qarm.rank.stage import load_inputs, simulate_cold
from qarm.rank.train import TensorData, predict
from qarm.runner import RunDir

SPLITS = ("test", "cold_test")


def feature_groups(specs: list[FeatureSpec]) -> dict[str, list[str]]:
    """Group name -> the item / dense feature names it hides, for the groups this model has.

    ``item id``, ``VQ bag``, ``RQ levels``, ``RQ prefixes``, ``all codes`` (VQ and RQ), ``dense
    vector``, and ``id + all item features`` (the model then sees only the user and the history)."""
    item = [s.name for s in specs if s.kind == "item"]
    dense = [s.name for s in specs if s.kind == "dense"]
    vq = [n for n in item if n.startswith("vq")]
    levels = [n for n in item if n.startswith("rq_l")]
    prefixes = [n for n in item if n.startswith("rq_p")]
    groups = {"item id": ["item_id"] if "item_id" in item else [], "VQ bag": vq, "RQ levels": levels,
              "RQ prefixes": prefixes, "all codes": vq + levels + prefixes if (vq and (levels or prefixes)) else [],
              "dense vector": dense, "id + all item features": item + dense}
    return {name: names for name, names in groups.items() if names}


def _hide(model: RankModel, originals: dict[str, torch.Tensor], names: list[str]) -> None:
    """Set the model's item tables to the originals, with ``names`` hidden (OOV / zero)."""
    dense_names = [s.name for s in model.dense_specs]
    for s in model.item_specs:
        idx = originals[f"idx_{s.name}"]
        hidden = torch.where(idx > UNKNOWN, torch.full_like(idx, UNKNOWN), idx) if s.name in names else idx
        getattr(model, f"idx_{s.name}").copy_(hidden)
    for i, name in enumerate(dense_names):
        src = originals[f"dense_{i}"]
        getattr(model, f"dense_{i}").copy_(torch.zeros_like(src) if name in names else src)


def feature_ablation(cfg: Config, run_dir: str | Path, variant: str, seed: int | None = None,
                     task: str | None = None, batch_size: int = 8192) -> list[dict[str, Any]]:
    """One row per hidden group (the first row: nothing hidden) for the ``variant`` / ``seed``
    model trained in ``run_dir`` under ``cfg`` (the run's config).

    Returns dicts: ``hidden`` (group name, ``"nothing"`` first), ``features`` (names hidden), ``task``, and
    per split in ``("test", "cold_test")``: ``<split>_auc`` and ``<split>_mean_logit`` (float) of
    ``task`` (default: the first task), ``n_<split>`` (events)."""
    run = RunDir(run_dir)
    seed = cfg.rank.seeds[0] if seed is None else seed
    path = run.path / "rank" / variant / f"seed{seed}" / "model.pt"
    if not path.is_file():
        raise StageInputError(f"{path} is missing: train variant {variant!r}, seed {seed} first (the 'train' stage)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    tasks = list(saved["tasks"])
    task = task or tasks[0]
    if task not in tasks:
        raise QarmError(f"task {task!r} is not one the model was trained on: {', '.join(tasks)}")
    t = tasks.index(task)
    src = saved["rank_config"]     # the trained model's settings win over the run's config
    rc = replace(cfg.rank, variants=[variant], vq_table=src.get("vq_table", cfg.rank.vq_table),
                 sim_depth=src.get("sim_depth", cfg.rank.sim_depth),
                 code_content=bool(src.get("code_content", False)), code_rows=bool(src.get("code_rows", True)),
                 code_content_source=str(src.get("code_content_source", "quantized")))
    inp = load_inputs(rc, run, int(cfg.quantize.rq_sizes[0]) if cfg.quantize.rq_sizes else 32, cfg.seed)
    tables = simulate_cold(inp.tables, float(src.get("simulated_cold", 0.0)), cfg.seed, seed)
    specs = [FeatureSpec(**s) for s in saved["specs"]]
    model = RankModel(specs, tables, len(tasks), src["att_hidden"], src["dnn_hidden"], src["towers"],
                      src["n_experts"], att_dim=src["dim"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    ev = inp.events
    parts = {s: ev.subset(ev.split == s) for s in SPLITS}
    data = {s: TensorData(e, specs, "cpu") for s, e in parts.items()}
    originals = {k: v.clone() for k, v in model.named_buffers() if k.startswith(("idx_", "dense_"))}
    rows = []
    for name, names in [("nothing", []), *feature_groups(specs).items()]:
        _hide(model, originals, names)
        row: dict[str, Any] = {"hidden": name, "features": names, "task": task}
        for s in SPLITS:
            p = np.clip(predict(model, data[s], batch_size)[:, t].astype(np.float64), 1e-7, 1 - 1e-7)
            row[f"{s}_auc"] = auc(parts[s].labels[:, t], p)
            row[f"{s}_mean_logit"] = float(np.log(p / (1 - p)).mean()) if len(p) else float("nan")
            row[f"n_{s}"] = len(p)
        rows.append(row)
    _hide(model, originals, [])
    return rows


def seed_runs(path: str | Path) -> list[Path]:
    """A run directory -> [it]; a study directory (``seed<s>/`` run directories) -> those, by seed."""
    path = Path(path)
    if (path / "config.json").is_file():
        return [path]
    runs = sorted((p for p in path.glob("seed*") if p.name[4:].isdigit() and (p / "config.json").is_file()),
                  key=lambda p: int(p.name[4:]))
    if not runs:
        raise StageInputError(f"{path}: neither a run directory (config.json) nor a study (seed<s>/config.json)")
    return runs


def study_ablation(path: str | Path, variant: str, seed: int | None = None,
                   task: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """``feature_ablation`` of every pipeline seed's run of a study (or of one run), each with its
    own config: run directory name -> rows."""
    return {p.name: feature_ablation(load_run_config(p), p, variant, seed, task) for p in seed_runs(path)}
