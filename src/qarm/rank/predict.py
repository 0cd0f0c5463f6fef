"""Serving-side ranker: load a trained (variant, seed) model and score candidates for one user.

``model.pt`` is self-contained (weights, feature specs, item tables, user vocabulary), so the
server needs no other artifact of the run to rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from qarm.errors import QarmError, StageInputError
from qarm.io import read_json
from qarm.rank.features import UNKNOWN, FeatureSpec, ItemTables, bucketize, match_counts
from qarm.rank.history import last_n_before
from qarm.rank.model import RankModel


def tables_from_state(state: dict[str, Any]) -> ItemTables:
    t = ItemTables(item_ids=state["item_ids"].numpy(),
                   index={k: v.numpy() for k, v in state["index"].items()},
                   dense={k: v.numpy() for k, v in state["dense"].items()}, vocab=dict(state["vocab"]))
    if "prefix" in state:
        t.prefix = state["prefix"].numpy()
        vq = state["vq"]
        n = len(vq["indices"])
        t.vq = sp.csr_matrix((np.ones(n, np.float32), vq["indices"].numpy(), vq["indptr"].numpy()),
                             shape=tuple(vq["shape"]))
    return t


class Ranker:
    """One trained ranker. ``score(history, candidates, user_id)`` -> task -> probabilities."""

    def __init__(self, model: RankModel, tables: ItemTables, user_vocab: np.ndarray, tasks: list[str],
                 history: int, sim_history: int, variant: str, seed: int) -> None:
        self.model_, self.tables_, self.user_vocab_ = model.eval(), tables, user_vocab
        self.tasks, self.history, self.sim_history = tasks, history, sim_history
        self.variant, self.seed = variant, seed
        self.count_names_ = [s.name for s in model.count_specs]
        self.uses_sim_ = any(s.name == "sim" for s in model.seq_specs)

    def score(self, history: list[int], candidates: list[int], user_id: int | None = None) -> dict[str, np.ndarray]:
        """history: item ids, oldest first (ids outside the catalogue are skipped); candidates:
        item ids [C] (unknown ones score as an unseen item); user_id: None or unseen = the OOV user.
        Returns task -> float32 [C] probabilities, candidates order."""
        t = self.tables_
        cand = t.rows(np.asarray(candidates, np.int64).reshape(-1))
        hist_rows = t.rows(np.asarray(history, np.int64).reshape(-1))
        hist_rows = hist_rows[hist_rows > UNKNOWN]
        n_c = len(cand)
        if n_c == 0:
            return {task: np.zeros(0, np.float32) for task in self.tasks}
        hist = np.zeros((n_c, self.history), np.int64)
        last = hist_rows[-self.history:]
        if len(last):
            hist[:, -len(last):] = last
        batch = {"target": cand, "history": hist, "user": np.full(n_c, self._user(user_id), np.int64)}
        if self.uses_sim_:
            l1 = t.prefix[:, 0]
            batch["sim"], _ = last_n_before(l1[hist_rows] + 1, np.arange(len(hist_rows)), hist_rows,
                                            l1[cand] + 1, np.full(n_c, len(hist_rows)), self.sim_history)
        if self.count_names_:
            counts = match_counts(t, cand, hist)
            batch["counts"] = np.stack([bucketize(counts[c]) for c in self.count_names_], 1)
        with torch.inference_mode():
            probs = torch.sigmoid(self.model_({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}))
        return {task: probs[:, i].numpy().astype(np.float32) for i, task in enumerate(self.tasks)}

    def _user(self, user_id: int | None) -> int:
        if user_id is None or not len(self.user_vocab_):
            return UNKNOWN
        pos = int(np.searchsorted(self.user_vocab_, user_id))
        return pos + 2 if pos < len(self.user_vocab_) and self.user_vocab_[pos] == user_id else UNKNOWN


def load_ranker(run_dir: str | Path, variant: str | None = None, seed: int | None = None) -> Ranker:
    """The ranker of ``variant`` (default: the stage's best by valid AUC) and ``seed`` (default:
    the first configured seed) trained in run directory ``run_dir``."""
    root = Path(run_dir) / "rank"
    summary = read_json(root / "summary.json")
    if summary is None:
        raise StageInputError(f"{root / 'summary.json'} is missing: run the 'train' stage first")
    variant = variant or summary["default_variant"]
    if variant not in summary["variants"]:
        raise QarmError(f"variant {variant!r} was not trained in {run_dir}; trained: {', '.join(summary['variants'])}")
    seed = summary["seed"] if seed is None else seed
    path = root / variant / f"seed{seed}" / "model.pt"
    if not path.exists():
        raise StageInputError(f"{path} is missing: run the 'train' stage first")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    rc = saved["rank_config"]
    tables = tables_from_state(saved["tables"])
    specs = [FeatureSpec(**s) for s in saved["specs"]]
    model = RankModel(specs, tables, len(saved["tasks"]), rc["att_hidden"], rc["dnn_hidden"], rc["towers"],
                      rc["n_experts"], att_dim=rc["dim"])
    model.load_state_dict(saved["state_dict"])
    return Ranker(model, tables, saved["user_vocab"].numpy(), list(saved["tasks"]), rc["history"],
                  rc["sim_history"], variant, seed)
