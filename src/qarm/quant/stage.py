"""The ``quantize`` stage: VQ and RQ-Kmeans codes for every item of a run.

Reads items.parquet and emb_aligned.npy (or emb_raw.npy), rows in items order. The codebooks and the VQ
pool are fitted on non-held-out items only (held-out items never enter training in any form); held-out
items are then coded with the frozen models, from their content alone, like any new item.
Writes codes.parquet (item_id, vq, rq) and quant/ (codebooks, prices, pool, index).
"""

from __future__ import annotations

import time

import numpy as np

from qarm.config import Config
from qarm.io import read_npy, write_json, write_parquet
from qarm.quant.checks import EmbeddingError, check_embeddings
from qarm.quant.config import QuantizeConfig
from qarm.quant.fsq import ResKMeansFSQ
from qarm.quant.metrics import rel_recon_errors, rq_metrics, vq_metrics
from qarm.quant.rq import RQKMeans
from qarm.quant.schema import codes_table  # noqa: F401  (re-exported: qarm.quant.stage.codes_table)
from qarm.quant.vq import VQCoder


def build_rq(q: QuantizeConfig, seed: int, verbose: bool = False) -> RQKMeans | ResKMeansFSQ:
    if q.rq_method == "fsq":
        return ResKMeansFSQ(q.rq_sizes, q.rq_fsq_levels, fsq_epochs=q.rq_fsq_epochs, fsq_lr=q.rq_fsq_lr,
                            n_iter=q.rq_iters, n_init=q.rq_n_init, init=q.rq_init,
                            max_train_points=q.rq_max_train_points, refine_rounds=q.rq_refine_rounds,
                            balanced=q.rq_fsq_balanced, balance_budget=q.rq_balance_budget,
                            balance_candidates=q.rq_balance_candidates, balance_rounds=q.rq_balance_rounds,
                            chunk_size=q.rq_chunk_size, seed=seed, verbose=verbose)
    return RQKMeans(q.rq_sizes, n_iter=q.rq_iters, n_init=q.rq_n_init, init=q.rq_init,
                    max_train_points=q.rq_max_train_points, refine_rounds=q.rq_refine_rounds,
                    balanced=q.rq_balanced, balance_budget=q.rq_balance_budget,
                    balance_candidates=q.rq_balance_candidates, balance_rounds=q.rq_balance_rounds,
                    chunk_size=q.rq_chunk_size, seed=seed, verbose=verbose)


def build_vq(q: QuantizeConfig, seed: int) -> VQCoder:
    return VQCoder(q.vq_k, pool=q.vq_pool, pool_size=q.vq_pool_size, metric=q.vq_metric, index=q.vq_index,
                   exclude_self=q.vq_exclude_self, hnsw_m=q.vq_hnsw_m, ef_search=q.vq_ef_search,
                   ivf_nlist=q.vq_ivf_nlist, nprobe=q.vq_nprobe, seed=seed)


def run_quantize(cfg: Config, run) -> dict:
    q = cfg.quantize
    items = run.items()
    name = "emb_aligned.npy" if q.embedding == "aligned" else "emb_raw.npy"
    path = run.require(name, "align")
    ids = items["item_id"].to_numpy(np.int64)
    emb = read_npy(path)
    if emb.ndim != 2 or emb.shape[0] != len(items):
        raise EmbeddingError(f"expected {len(items)} rows (one per item of items.parquet), got shape {emb.shape}",
                             file=str(path))
    emb = check_embeddings(emb, str(path), ids=ids)
    holdout = items["holdout"].to_numpy(bool) if "holdout" in items else np.zeros(len(items), bool)
    fit = ~holdout
    popularity = items["train_count"].to_numpy(np.int64) if "train_count" in items else None

    t0 = time.perf_counter()
    rq = build_rq(q, cfg.seed, verbose=True).fit(emb[fit])
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rq_codes = rq.transform(emb)
    transform_s = time.perf_counter() - t0

    vq = build_vq(q, cfg.seed).fit(emb[fit], ids[fit], None if popularity is None else popularity[fit])
    vq_codes = vq.transform(emb, item_ids=ids)

    quant_dir = run.subdir("quant")
    rq.save(quant_dir)
    vq.save(quant_dir)
    write_json(quant_dir / "quantize.json", {"embedding": name, "dim": int(emb.shape[1]),
                                             "n_fit_items": int(fit.sum()), "n_holdout_items": int(holdout.sum())})
    write_parquet(run / "codes.parquet", codes_table(ids, vq_codes, rq_codes))

    metrics = {"embedding": q.embedding, "n_items": len(items), "n_fit_items": int(fit.sum()),
               "n_holdout_items": int(holdout.sum())}
    metrics.update(rq_metrics(emb, rq_codes, rq.codebooks_, rq.sizes))
    metrics["rq.method"] = q.rq_method
    metrics["rq.balanced"] = bool(q.rq_balanced) and q.rq_method == "kmeans"
    metrics["rq.n_prices"] = int(rq.price_keys_.size)
    metrics["rq.fit_s"] = round(fit_s, 3)
    metrics["rq.transform_items_per_s"] = float(len(emb) / max(transform_s, 1e-9))
    if holdout.any():  # cold items coded from content only: how well do the frozen codebooks fit them?
        metrics["rq.holdout_rel_recon_error"] = rel_recon_errors(emb[holdout], rq_codes[holdout], rq.codebooks_)[-1]
        metrics["rq.holdout_collision_rate"] = _share_colliding(rq_codes, holdout)
    metrics.update(vq_metrics(vq_codes, len(vq.pool_ids_), q.vq_k))
    metrics["vq.neighbor_overlap"] = vq.neighbor_overlap(vq_codes, ids)
    return metrics


def _share_colliding(codes: np.ndarray, rows: np.ndarray) -> float:
    """Share of the selected rows whose full code some other item (of all items) also has."""
    _, inverse, counts = np.unique(np.ascontiguousarray(codes), axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.ravel()][rows] > 1).mean())
