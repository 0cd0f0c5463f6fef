"""The ``train`` stage: every ablation variant x seed on identical data and splits, evaluated on
test (AUC, GAUC, LogLoss per task), on the strict cold-start events (``cold_test``) and per
item-frequency bucket; figures under ``rank`` in metrics.json.

Layout: ``rank/<variant>/seed<s>/{ckpt.pt, model.pt, predictions.parquet, result.json}`` and
``rank/summary.json`` (the default variant ``load_ranker`` serves). A finished (variant, seed)
whose fingerprint (rank config, seed, input hashes) matches is reused, an unfinished one resumes
from its last epoch checkpoint.

Under ``torchrun`` (``python -m qarm.rank CONFIG --out RUN``) every rank runs this function; rank 0
evaluates and writes, the others train their stripe of each batch and return the same figures.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from qarm.config import Config
from qarm.distributed import check_device, init_distributed, leave_process_group, resolve_device, world
from qarm.errors import ConfigError, DataError, StageInputError
from qarm.io import (
    path_sha256,
    read_json,
    read_npy,
    read_parquet,
    save_torch,
    write_json,
    write_parquet,
)
from qarm.rank.config import RankConfig
from qarm.rank.features import (
    CODE_VARIANTS,
    DENSE_OF,
    UNKNOWN,
    VARIANTS,
    VQ_TABLES,
    VQ_VARIANTS,
    EventArrays,
    ItemTables,
    build_events,
    build_item_tables,
    variant_specs,
)
from qarm.rank.metrics import auc, auc_by_group, gauc, logloss
from qarm.rank.model import RankModel
from qarm.rank.train import TensorData, fit, predict

DENSE_FILES = DENSE_OF
# rank.code_content_source -> the embedding file its content vectors average ("quantized": the one
# the codes were quantised from, read from quant/quantize.json)
CONTENT_SOURCES = {"raw": "emb_raw.npy", "aligned": "emb_aligned.npy"}


def check_config(rc: RankConfig) -> None:
    bad = [v for v in rc.variants if v not in VARIANTS]
    if bad or not rc.variants:
        raise ConfigError(f"rank.variants: {bad or 'empty'}; choose from {', '.join(VARIANTS)}")
    if not rc.seeds:
        raise ConfigError("rank.seeds: give at least one seed")
    if not rc.tasks:
        raise ConfigError("rank.tasks: give at least one label column")
    for name in ("history", "dim", "code_dim", "count_dim", "epochs", "batch_size", "eval_batch_size", "threads"):
        if getattr(rc, name) < 1:
            raise ConfigError(f"rank.{name}: expected >= 1, got {getattr(rc, name)}")
    if rc.sim_history < 0 or rc.patience < 0 or rc.lr <= 0 or rc.sim_clusters < 0:
        raise ConfigError("rank.sim_history, rank.sim_clusters and rank.patience must be >= 0, rank.lr > 0")
    for name in ("item_id_dropout", "user_id_dropout", "code_dropout", "simulated_cold"):
        rate = getattr(rc, name)
        if not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ConfigError(f"rank.{name}: expected a rate in [0, 1), got {rate!r}")
    for name in ("drop_private_codes", "code_content", "code_rows"):
        if not isinstance(getattr(rc, name), bool):
            raise ConfigError(f"rank.{name}: expected true or false, got {getattr(rc, name)!r}")
    if rc.code_content_source not in ("quantized", *CONTENT_SOURCES):
        raise ConfigError(f"rank.code_content_source: expected quantized, {', '.join(CONTENT_SOURCES)}; "
                          f"got {rc.code_content_source!r}")
    if not rc.code_rows and not rc.code_content:
        raise ConfigError("rank.code_rows: false (codes without trainable rows) needs rank.code_content: true")
    if rc.simulated_cold > 0 and rc.vq_table == "item_id":
        raise ConfigError("rank.simulated_cold works with rank.vq_table: own only (with item_id, a simulated "
                          "cold item's id row would still be trained as other items' VQ code)")
    if not isinstance(rc.embedding_l2, (int, float)) or not 0.0 <= rc.embedding_l2 < float("inf"):
        raise ConfigError(f"rank.embedding_l2: expected a finite number >= 0, got {rc.embedding_l2!r}")
    if rc.sim_depth < 1:
        raise ConfigError(f"rank.sim_depth: expected >= 1 (an RQ prefix depth), got {rc.sim_depth}")
    if rc.vq_table not in VQ_TABLES:
        raise ConfigError(f"rank.vq_table: expected one of {VQ_TABLES}, got {rc.vq_table!r}")
    check_device(rc.device, "rank.device")
    if not rc.att_hidden or not rc.dnn_hidden or min(rc.att_hidden + rc.dnn_hidden) < 1:
        raise ConfigError("rank.att_hidden and rank.dnn_hidden: non-empty lists of positive sizes")


@dataclasses.dataclass
class RankInputs:
    """Everything the variants share: item tables, event arrays, per-event frequency bucket."""

    tables: ItemTables
    events: EventArrays
    freq_bucket: np.ndarray
    item_ids: np.ndarray
    user_vocab: np.ndarray
    info: dict[str, int]
    input_hash: str
    code_input_hash: str = ""   # input_hash plus what only the code variants read (rank.code_content)


def load_inputs(rc: RankConfig, run: Any, sim_clusters: int = 32, seed: int = 0) -> RankInputs:
    """Read the run's artifacts (only those the configured variants need) and build features.
    ``sim_clusters`` / ``seed``: the dense variants' SIM k-means (``rank.sim_clusters`` wins when > 0)."""
    items, events = run.items(), run.events()
    need_codes = any(v in CODE_VARIANTS for v in rc.variants)
    names = ["items.parquet", "events.parquet"] + sorted({DENSE_FILES[v] for v in rc.variants if v in DENSE_FILES})
    if need_codes:
        names.append("codes.parquet")
    for name in names:
        run.require(name, "quantize" if name == "codes.parquet" else "align" if name.endswith(".npy") else "prepare")
    dense = {n: read_npy(run / n) for n in names if n.endswith(".npy")}
    codes = read_parquet(run / "codes.parquet") if need_codes else None
    pool_ids = None
    if need_codes and rc.vq_table == "item_id":
        names.append("quant/vq_pool_ids.npy")
        run.require("quant/vq_pool_ids.npy", "quantize")
        pool_ids = read_npy(run / "quant/vq_pool_ids.npy")
    content, code_names = None, []
    if need_codes and rc.code_content:
        if rc.code_content_source in CONTENT_SOURCES:
            source, code_names = CONTENT_SOURCES[rc.code_content_source], []
        else:   # "quantized": the embedding the codes came from, as the quantize stage recorded it
            run.require("quant/quantize.json", "quantize")
            source = (read_json(run / "quant/quantize.json") or {}).get("embedding")
            if source not in ("emb_aligned.npy", "emb_raw.npy"):
                raise StageInputError(f"{run / 'quant/quantize.json'} names no embedding file ('embedding': "
                                      f"{source!r}): rerun the 'quantize' stage")
            code_names = ["quant/quantize.json"]
        run.require(source, "align")
        code_names.append(source)
        content = dense[source] if source in dense else read_npy(run / source)
    if "train_count" not in items.columns:
        raise DataError("no 'train_count' column: rerun the 'prepare' stage", file="items.parquet", column="train_count")
    tables = build_item_tables(items, codes, dense, rc.sim_clusters or sim_clusters, seed, vq_pool_ids=pool_ids,
                               sim_depth=rc.sim_depth, code_content=content)
    ev, info = build_events(tables, events, list(rc.tasks), rc.history_label, rc.history, rc.sim_history)
    if info["n_train"] == 0 or info["n_valid"] == 0 or info["n_test"] == 0:
        raise DataError(f"the ranker needs train, valid and test events, got {info}", file="events.parquet", column="split")
    freq = items["freq_bucket"].to_numpy(object) if "freq_bucket" in items.columns else np.full(len(items), "all", object)
    freq_bucket = np.concatenate([np.array(["unknown", "unknown"], object), freq])[ev.target]
    users = events["user_id"].to_numpy(np.int64)[(events["split"] == "train").to_numpy()]
    def files_hash(files: list[str]) -> str:
        return hashlib.sha256(json.dumps({n: path_sha256(run / n) for n in files}, sort_keys=True).encode()).hexdigest()[:16]

    # the variants without codes do not read the code content files: their runs stay reusable
    h = files_hash(names)
    code_h = files_hash(sorted(set(names + code_names))) if code_names else h
    return RankInputs(tables, ev, freq_bucket, tables.item_ids, np.unique(users), info, h, code_h)


# rank fields that only some variants read: a variant's fingerprint leaves out the others, so a sweep
# over a code knob reuses the runs of the variants without codes (ia_rep, id, ...) instead of
# retraining them bit for bit at every point
CODE_ONLY_FIELDS = ("code_dropout", "drop_private_codes", "sim_depth", "code_content", "code_rows",
                    "code_content_source")
VQ_ONLY_FIELDS = ("vq_table",)
DENSE_ONLY_FIELDS = ("sim_clusters",)
# fields added after runs were made, at the value that means "off" (not merely the default: a
# default may change, "off" does not): left out there, so the runs made before keep their
# fingerprint and are reused
NEW_FIELDS_OFF = {"embedding_l2": 0.0, "simulated_cold": 0.0, "code_content": False, "code_rows": True,
                  "code_content_source": "quantized"}


def fingerprint(cfg: Config, variant: str, seed: int, input_hash: str) -> str:
    """What one (variant, seed) run computes: the rank fields it reads, the pipeline and ranker
    seeds, the input files' hash. Equal fingerprints give the same bytes, so the run is reused."""
    rc = dataclasses.asdict(cfg.rank)
    for k in ("variants", "seeds", "threads", "device"):  # which runs exist and where, not what one run computes
        rc.pop(k)
    for k, off in NEW_FIELDS_OFF.items():
        if rc[k] == off:
            rc.pop(k)
    unread = ((CODE_ONLY_FIELDS if variant not in CODE_VARIANTS else ())
              + (VQ_ONLY_FIELDS if variant not in VQ_VARIANTS else ())
              + (DENSE_ONLY_FIELDS if variant not in DENSE_FILES else ()))
    for k in unread:
        rc.pop(k, None)   # an off NEW_FIELDS_OFF field is gone already
    blob = json.dumps({"rank": rc, "seed": cfg.seed, "variant": variant, "rank_seed": seed, "inputs": input_hash},
                      sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def evaluate(probs: np.ndarray, ev: EventArrays, tasks: list[str]) -> dict[str, dict[str, Any]]:
    """AUC, GAUC, LogLoss per task of probabilities [E, T] on events ``ev``, plus AUC and GAUC of
    the events of warm users (>= 1 train event: their own user embedding) and of new users."""
    out: dict[str, dict[str, Any]] = {}
    warm = ev.user != UNKNOWN
    for t, task in enumerate(tasks):
        y, p = ev.labels[:, t], probs[:, t]
        out[task] = {"auc": auc(y, p), "gauc": gauc(y, p, ev.user_id), "logloss": logloss(y, p)}
        for name, m in (("warm_users", warm), ("new_users", ~warm)):
            out[task][name] = {"auc": auc(y[m], p[m]), "gauc": gauc(y[m], p[m], ev.user_id[m])}
    return out


def _seed_all(cfg: Config, seed: int) -> int:
    s = int(np.random.SeedSequence([cfg.seed, seed]).generate_state(1)[0] % (2 ** 31))
    torch.manual_seed(s)
    return s


def train_one(cfg: Config, run: Any, inp: RankInputs, variant: str, seed: int) -> dict[str, Any]:
    """Train, evaluate and save one (variant, seed); reuse it when already done with this fingerprint."""
    rc = cfg.rank
    rank, _ = world()
    out = run.path / "rank" / variant / f"seed{seed}"
    fp = fingerprint(cfg, variant, seed, inp.code_input_hash if variant in CODE_VARIANTS else inp.input_hash)
    done = read_json(out / "result.json")
    if done and done.get("fingerprint") == fp:
        return done
    tables = simulate_cold(inp.tables, float(rc.simulated_cold), cfg.seed, seed)
    specs = variant_specs(variant, tables, len(inp.user_vocab) + 2, rc.history, rc.sim_history,
                          rc.dim, rc.code_dim, rc.count_dim, rc.vq_table, bool(rc.code_content), bool(rc.code_rows))
    torch_seed = _seed_all(cfg, seed)
    device = resolve_device(rc.device, "rank.device")
    model = RankModel(specs, tables, len(rc.tasks), list(rc.att_hidden), list(rc.dnn_hidden), rc.towers,
                      rc.n_experts, att_dim=rc.dim, sparse=bool(rc.sparse_ids))
    model.detach_idless_codes = rc.simulated_cold > 0
    model.item_id_dropout, model.user_id_dropout = float(rc.item_id_dropout), float(rc.user_id_dropout)
    model.code_dropout, model.drop_private_codes = float(rc.code_dropout), rc.drop_private_codes
    model.embedding_l2 = float(rc.embedding_l2)
    model.to(device)
    ev = inp.events
    parts = {s: ev.subset(ev.split == s) for s in ("train", "valid", "test", "cold_test")}
    data = {s: TensorData(e, specs, device) for s, e in parts.items()}
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    result = fit(model, data["train"], data["valid"], rc, torch_seed, out / "ckpt.pt", fp, desc=f"{variant}/seed{seed}")
    model.load_state_dict(result.best_state)
    res: dict[str, Any] = {}
    if rank == 0:
        t0 = time.perf_counter()
        probs = {s: predict(model, data[s], rc.eval_batch_size) for s in ("test", "cold_test")}
        eval_s = time.perf_counter() - t0
        test, cold = evaluate(probs["test"], parts["test"], rc.tasks), evaluate(probs["cold_test"], parts["cold_test"], rc.tasks)
        buckets = {task: auc_by_group(parts["test"].labels[:, t], probs["test"][:, t], inp.freq_bucket[ev.split == "test"])
                   for t, task in enumerate(rc.tasks)}
        res = {"fingerprint": fp, "variant": variant, "seed": seed, "best_epoch": result.best_epoch,
               "best_valid_auc": result.best_valid_auc, "log": result.log,
               "tasks": {task: {**test[task], **{f"cold_{k}": v for k, v in cold[task].items()}} for task in rc.tasks},
               "n_test_warm_user_events": int((parts["test"].user != UNKNOWN).sum()),
               "n_test_new_user_events": int((parts["test"].user == UNKNOWN).sum()),
               "buckets": buckets, "train_samples": result.train_samples, "train_seconds": result.train_seconds,
               "eval_samples": len(parts["test"]) + len(parts["cold_test"]), "eval_seconds": eval_s,
               "resumed_from_epoch": result.resumed_from_epoch}
        save_torch(out / "model.pt", {"variant": variant, "seed": seed, "tasks": list(rc.tasks),
                                      "rank_config": dataclasses.asdict(rc),
                                      "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                                      "specs": [dataclasses.asdict(s) for s in specs],
                                      "tables": tables_state(tables), "user_vocab": torch.from_numpy(inp.user_vocab)})
        pred = pd.DataFrame({"user_id": np.concatenate([parts[s].user_id for s in ("test", "cold_test")]),
                             "item_id": inp.item_ids[np.concatenate([parts[s].target for s in ("test", "cold_test")]) - 2],
                             "split": np.concatenate([parts[s].split for s in ("test", "cold_test")]).astype(str)})
        for t, task in enumerate(rc.tasks):
            pred[task] = np.concatenate([parts[s].labels[:, t] for s in ("test", "cold_test")]).astype(np.int8)
            pred[f"p_{task}"] = np.concatenate([probs[s][:, t] for s in ("test", "cold_test")])
        write_parquet(out / "predictions.parquet", pred)
        write_json(out / "result.json", res)
    if world()[1] > 1:
        box = [res]
        dist.broadcast_object_list(box, src=0)
        res = box[0]
    return res


def simulate_cold(tables: ItemTables, fraction: float, pipeline_seed: int, rank_seed: int) -> ItemTables:
    """``tables`` with ``fraction`` of the trained items' id index set to the OOV row (``rank.simulated_cold``):
    a fixed draw from (pipeline seed, ranker seed), the same for every variant. The tables are
    shared between variants, so this returns a copy of the item-id index, never edits it."""
    if fraction <= 0:
        return tables
    ids = tables.index["item_id"]
    trained = np.flatnonzero(ids[:, 0] > UNKNOWN)
    rng = np.random.default_rng([pipeline_seed, rank_seed, 0xC01D])
    cold = trained[rng.random(len(trained)) < fraction]
    index = dict(tables.index)
    index["item_id"] = ids.copy()
    index["item_id"][cold] = UNKNOWN
    return dataclasses.replace(tables, index=index)


def tables_state(t: ItemTables) -> dict[str, Any]:
    """What ``Ranker`` needs of the item tables, as tensors (loadable with weights_only)."""
    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a))  # a copy: arrays from pandas may be read-only

    state: dict[str, Any] = {"item_ids": tensor(t.item_ids),
                             "index": {k: tensor(v) for k, v in t.index.items()},
                             "dense": {k: tensor(v) for k, v in t.dense.items()},
                             "vocab": dict(t.vocab), "keys": {k: tensor(v) for k, v in t.keys.items()},
                             "cluster": {k: tensor(v) for k, v in t.cluster.items()},
                             "centroids": {k: tensor(v) for k, v in t.centroids.items()},
                             "cos_edges": {k: tensor(v) for k, v in t.cos_edges.items()}, "rq_bits": t.rq_bits,
                             "content": {k: tensor(v) for k, v in t.content.items()},
                             "sim_depth": t.sim_depth}
    if t.rq is not None:
        state["vq_raw"], state["rq_raw"] = tensor(t.vq), tensor(t.rq)
    return state


def _mean_std(values: list[float]) -> dict[str, float]:
    v = np.array(values, np.float64)
    ok = v[~np.isnan(v)]
    if not len(ok):
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": float(ok.mean()), "std": float(ok.std(ddof=1)) if len(ok) > 1 else 0.0}


def _nan_safe_mean(values: list[float]) -> float | None:
    """Mean over the seeds where a bucket's AUC is defined; None (JSON null) when it never is."""
    ok = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(ok)) if ok else None


def summarize(results: dict[str, list[dict[str, Any]]], tasks: list[str]) -> dict[str, Any]:
    """Per-variant mean/std over seeds, bucket AUC means, throughput."""
    variants: dict[str, Any] = {}
    buckets: dict[str, Any] = {}
    for v, runs in results.items():
        variants[v] = {}
        for t in tasks:
            m: dict[str, Any] = {}
            for k, first in runs[0]["tasks"][t].items():
                if isinstance(first, dict):  # a population: warm_users, new_users, cold_warm_users, ...
                    m[k] = {mk: _mean_std([r["tasks"][t][k][mk] for r in runs]) for mk in first}
                else:
                    m[k] = _mean_std([r["tasks"][t][k] for r in runs])
            variants[v][t] = m
        variants[v]["best_epoch"] = _mean_std([r["best_epoch"] for r in runs])
        buckets[v] = {t: {b: _nan_safe_mean([r["buckets"][t].get(b, np.nan) for r in runs])
                          for b in sorted({b for r in runs for b in r["buckets"][t]})} for t in tasks}
    all_runs = [r for runs in results.values() for r in runs]
    train_s = sum(r["train_seconds"] for r in all_runs)
    eval_s = sum(r["eval_seconds"] for r in all_runs)
    return {"variants": variants, "buckets": buckets, "throughput": {
        "train_samples_per_s": sum(r["train_samples"] for r in all_runs) / train_s if train_s else float("nan"),
        "eval_samples_per_s": sum(r["eval_samples"] for r in all_runs) / eval_s if eval_s else float("nan")}}


def run_train(cfg: Config, run: Any) -> dict[str, Any]:
    """Stage entry point: train and evaluate every configured variant x seed."""
    rc = cfg.rank
    check_config(rc)
    torch.set_num_threads(rc.threads)
    init_distributed(resolve_device(rc.device, "rank.device"))
    t0 = time.perf_counter()
    inp = load_inputs(rc, run, int(cfg.quantize.rq_sizes[0]) if cfg.quantize.rq_sizes else 32, cfg.seed)
    prep_s = time.perf_counter() - t0
    results = {v: [train_one(cfg, run, inp, v, s) for s in rc.seeds] for v in rc.variants}
    metrics = summarize(results, list(rc.tasks))
    # the served default: best mean valid AUC, first seed of that variant
    default = max(rc.variants, key=lambda v: np.mean([r["best_valid_auc"] for r in results[v]]))
    first = results[rc.variants[0]][0]
    metrics.update({"default_variant": default, "feature_seconds": round(prep_s, 3),
                    "world_size": world()[1], "device": str(resolve_device(rc.device, "rank.device")),
                    "n_test_warm_user_events": first.get("n_test_warm_user_events"),
                    "n_test_new_user_events": first.get("n_test_new_user_events"),
                    **{k: v for k, v in inp.info.items()}})
    if world()[0] == 0:
        write_json(run.path / "rank" / "summary.json", {"default_variant": default, "seed": rc.seeds[0],
                                                       "variants": list(rc.variants), "seeds": list(rc.seeds),
                                                       "tasks": list(rc.tasks)})
    leave_process_group()
    return metrics
