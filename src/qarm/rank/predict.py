"""Serving-side ranker: load a trained (variant, seed) model and score candidates for one user.

``model.pt`` is self-contained (weights, feature specs, item tables, user vocabulary), so the
server needs no other artifact of the run to rank. A request costs O(candidates + history): the
ranker takes the rows of the items it names from the item tables (``ItemTables.take``), appends
new items given by content (``extra_items``), and runs the model on that small local table, with
histories, SIM sequences and match counts built by the same functions as offline evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qarm.errors import DataError, QarmError, StageInputError
from qarm.io import read_json
from qarm.lookup import IdIndex
from qarm.rank.features import (
    UNKNOWN,
    FeatureSpec,
    ItemTables,
    bucketize,
    match_counts,
    sim_groups,
)
from qarm.rank.history import last_n_before
from qarm.rank.model import RankModel


@dataclass
class ItemContent:
    """An item the trained tables do not hold (or whose tables entry a request overrides).

    vq: int64 [K] VQ pool positions, rq: int64 [L] RQ codes (as in codes.parquet);
    dense: embedding file name ("emb_raw.npy", "emb_aligned.npy") -> float32 [d].
    """

    vq: np.ndarray | list[int] | None = None
    rq: np.ndarray | list[int] | None = None
    dense: dict[str, np.ndarray] = field(default_factory=dict)


def _content(c: ItemContent | Mapping[str, Any]) -> ItemContent:
    if isinstance(c, ItemContent):
        return c
    return ItemContent(c.get("vq"), c.get("rq"), dict(c.get("dense") or {}))


def tables_from_state(state: dict[str, Any]) -> ItemTables:
    def arrays(key: str) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in state.get(key, {}).items()}

    t = ItemTables(item_ids=state["item_ids"].numpy(), index=arrays("index"), dense=arrays("dense"),
                   vocab=dict(state["vocab"]), keys=arrays("keys"), cluster=arrays("cluster"),
                   centroids=arrays("centroids"), cos_edges=arrays("cos_edges"), content=arrays("content"),
                   rq_bits=int(state.get("rq_bits", 0)),
                   sim_depth=int(state.get("sim_depth", 1)))
    if "rq_raw" in state:
        t.vq, t.rq = state["vq_raw"].numpy(), state["rq_raw"].numpy()
    return t


class Ranker:
    """One trained ranker. ``score(history, candidates, user_id, extra_items)`` -> task -> probabilities."""

    def __init__(self, model: RankModel, tables: ItemTables, user_vocab: np.ndarray, tasks: list[str],
                 history: int, sim_history: int, variant: str, seed: int) -> None:
        self.model_, self.tables_ = model.eval(), tables
        self.user_index_ = IdIndex(np.asarray(user_vocab, np.int64), name="user_id")
        self.user_vocab_ = self.user_index_.ids
        self.tasks, self.history, self.sim_history = tasks, history, sim_history
        self.variant, self.seed = variant, seed
        self.count_names_ = [s.name for s in model.count_specs]
        self.seq_names_ = [s.name for s in model.seq_specs]
        self.device_ = next(model.parameters()).device

    @property
    def needs_dense(self) -> set[str]:
        """The dense embedding files (``emb_raw.npy`` / ``emb_aligned.npy``) this variant reads: what a
        new item's ``ItemContent.dense`` must carry."""
        return {s.name for s in self.model_.dense_specs}

    @property
    def needs_codes(self) -> bool:
        """Whether new items need their ``vq`` / ``rq`` codes (variants with code features)."""
        return self.tables_.rq is not None and any(s.name != "item_id" for s in self.model_.item_specs)

    def local_tables(self, item_ids: np.ndarray,
                     extra_items: Mapping[int, ItemContent | Mapping[str, Any]] | None = None
                     ) -> tuple[ItemTables, np.ndarray]:
        """A small table of the unique ``item_ids`` int64 [n] (catalogue rows, then ``extra_items``,
        which override a catalogue entry of the same id) -> (tables, local row int64 [n] per id).
        Ids neither in the catalogue nor in ``extra_items`` get local row UNKNOWN."""
        t = self.tables_
        extra = {int(k): _content(v) for k, v in (extra_items or {}).items()}
        uniq, inv = np.unique(np.asarray(item_ids, np.int64), return_inverse=True)
        is_new = np.isin(uniq, np.fromiter(extra, np.int64, len(extra)))
        cat_rows = t.rows(uniq)
        known = (cat_rows > UNKNOWN) & ~is_new
        local = t.take(cat_rows[known])
        new_ids = uniq[is_new]
        if len(new_ids):
            local = local.append(*self._new_content(new_ids, extra))
        row_of = np.full(len(uniq), UNKNOWN, np.int64)
        row_of[known] = 2 + np.arange(int(known.sum()))
        row_of[is_new] = 2 + int(known.sum()) + np.arange(len(new_ids))
        return local, row_of[inv.reshape(-1)]

    def _new_content(self, ids: np.ndarray, extra: dict[int, ItemContent]
                     ) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]:
        t = self.tables_
        vq = rq = None
        if t.rq is not None:
            k, depth = t.vq.shape[1], t.rq.shape[1]
            vq, rq = np.full((len(ids), k), -1, np.int64), np.full((len(ids), depth), -1, np.int64)
            for j, i in enumerate(ids):
                c = extra[int(i)]
                for name, arr, width in (("vq", c.vq, k), ("rq", c.rq, depth)):
                    if arr is None:
                        if self.needs_codes:
                            raise DataError(f"new item {int(i)}: {name} codes needed by ranker variant "
                                            f"{self.variant!r}", column=name)
                        continue
                    a = np.asarray(arr, np.int64).reshape(-1)
                    if len(a) != width:
                        raise DataError(f"new item {int(i)}: expected {width} {name} codes, got {len(a)}", column=name)
                    (vq if name == "vq" else rq)[j] = a
        dense = {}
        for name, table in t.dense.items():
            d = table.shape[1]
            rows = np.zeros((len(ids), d), np.float32)
            for j, i in enumerate(ids):
                v = extra[int(i)].dense.get(name)
                if v is None:
                    if name in self.needs_dense:
                        raise DataError(f"new item {int(i)}: dense vector {name} needed by ranker variant "
                                        f"{self.variant!r}", file=name)
                    continue
                rows[j] = np.asarray(v, np.float32).reshape(d)
            dense[name] = rows
        return vq, rq, dense

    def score(self, history: list[int], candidates: list[int], user_id: int | None = None,
              extra_items: Mapping[int, ItemContent | Mapping[str, Any]] | None = None) -> dict[str, np.ndarray]:
        """Scores of ``candidates`` for one user, in O(candidates + history).

        history: item ids, oldest first (ids neither in the catalogue nor in ``extra_items`` are
        skipped, as offline histories hold only catalogue items); candidates: item ids [C] (unknown
        ones without content score as an unseen item); user_id: None or unseen = the OOV user;
        extra_items: item id -> ``ItemContent`` (or a dict with ``vq``, ``rq``, ``dense``) for items
        outside the trained tables: they enter as held-out items do offline (OOV id, their codes,
        their dense vectors). Returns task -> float32 [C] probabilities, candidates order.
        """
        cand_ids = np.asarray(candidates, np.int64).reshape(-1)
        hist_ids = np.asarray(history, np.int64).reshape(-1)
        n_c = len(cand_ids)
        if n_c == 0:
            return {task: np.zeros(0, np.float32) for task in self.tasks}
        t, rows = self.local_tables(np.r_[cand_ids, hist_ids], extra_items)
        cand, hist_rows = rows[:n_c], rows[n_c:]
        hist_rows = hist_rows[hist_rows > UNKNOWN]
        hist = np.zeros((n_c, self.history), np.int64)
        last = hist_rows[-self.history:]
        if len(last):
            hist[:, -len(last):] = last
        batch: dict[str, Any] = {"target": cand, "history": hist, "user": np.full(n_c, self._user(user_id), np.int64)}
        groups = sim_groups(t)
        for name in self.seq_names_:
            if name != "history":
                g = groups[name]
                batch[name], _ = last_n_before(g[hist_rows] + 1, np.arange(len(hist_rows)), hist_rows,
                                               g[cand] + 1, np.full(n_c, len(hist_rows)), self.sim_history)
        if self.count_names_:
            counts = match_counts(t, cand, hist)
            batch["counts"] = np.stack([bucketize(counts[c]) for c in self.count_names_], 1)
        model = self.model_
        feats = {s.name: torch.from_numpy(np.ascontiguousarray(t.index[s.name])) for s in model.item_specs}
        for i, s in enumerate(model.dense_specs):
            feats[f"dense_{i}"] = torch.from_numpy(np.ascontiguousarray(t.dense[s.name]))
        dev = self.device_
        inputs = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in batch.items()}
        inputs["items"] = {k: v.to(dev) for k, v in feats.items()}
        with torch.inference_mode():
            probs = torch.sigmoid(model(inputs).float()).cpu()
        return {task: probs[:, i].numpy().astype(np.float32) for i, task in enumerate(self.tasks)}

    def _user(self, user_id: int | None) -> int:
        if user_id is None:
            return UNKNOWN
        return int(self.user_index_.rows(np.array([user_id], np.int64), missing=UNKNOWN, offset=2)[0])


def load_ranker(run_dir: str | Path, variant: str | None = None, seed: int | None = None,
                device: str = "cpu") -> Ranker:
    """The ranker of ``variant`` (default: the stage's best by valid AUC) and ``seed`` (default:
    the first configured seed) trained in run directory ``run_dir``, on ``device``."""
    from qarm.distributed import resolve_device

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
    model.to(resolve_device(device, "device"))
    return Ranker(model, tables, saved["user_vocab"].numpy(), list(saved["tasks"]), rc["history"],
                  rc["sim_history"], variant, seed)
