"""The ``retrieve`` stage: generative retrieval from aligned and raw codes against SASRec and popularity.

Reads items.parquet, events.parquet, codes.parquet (the run's RQ codes: ``aligned_codes``) and
emb_raw.npy, which it quantises here with the quantize section's RQ settings (``raw_codes``; fitted on
non-held-out items, like the stage's own codes), so the only difference between the two generative
runs is the embedding the codes come from. Every method is evaluated on the same leave-one-out split
(``qarm.retrieve.sequences``). Writes retrieve/ (checkpoints, best weights, raw-code quantiser) and
returns the figures stored under ``retrieve`` in metrics.json.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from qarm.config import Config
from qarm.errors import DataError
from qarm.io import read_npy, read_parquet, save_torch, write_json
from qarm.lookup import IdIndex
from qarm.retrieve.config import RetrieveConfig
from qarm.retrieve.evaluate import mean_std_over_seeds, retrieval_figures
from qarm.retrieve.sequences import leave_one_out


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def read_rq_codes(path, item_ids: np.ndarray) -> np.ndarray:
    """codes.parquet's ``rq`` lists as int64 [n_items, L] in items.parquet order; every item must have one."""
    tab = read_parquet(path, columns=["item_id", "rq"])
    index = IdIndex(tab["item_id"].to_numpy(np.int64), name="item_id")
    rows, found = index.find(item_ids)
    if not found.all():
        missing = item_ids[~found]
        raise DataError(f"{len(missing)} item(s) of items.parquet have no codes, first item_id {int(missing[0])}: "
                        "rerun the 'quantize' stage", file=str(path), column="item_id")
    lens = tab["rq"].map(len).to_numpy()
    if len(set(lens.tolist())) > 1:
        bad = int(np.flatnonzero(lens != lens[0])[0])
        raise DataError(f"rq lists have different lengths ({lens[0]} and {lens[bad]})", file=str(path), row=bad,
                        column="rq")
    return np.stack(tab["rq"].to_numpy()[rows]).astype(np.int64)


def _model_kwargs(r: RetrieveConfig, seed: int) -> dict[str, Any]:
    return dict(max_len=r.max_len, dim=r.dim, layers=r.layers, heads=r.heads, dropout=r.dropout, epochs=r.epochs,
                patience=r.patience, batch_size=r.batch_size, lr=r.lr, weight_decay=r.weight_decay,
                beam_size=r.beam_size, exclude_history=r.exclude_history, valid_users=r.valid_users,
                eval_batch_users=r.eval_batch_users,
                windows_per_user=r.windows_per_user, device=r.device, seed=seed, verbose=True)


def run_retrieve(cfg: Config, run) -> dict:
    r = cfg.retrieve
    out_dir = run.subdir("retrieve")
    if not r.enabled:
        return {"enabled": False}
    from qarm.distributed import check_device
    from qarm.quant.metrics import collision_stats
    from qarm.quant.stage import build_rq

    check_device(r.device, "retrieve.device")
    t_stage = time.perf_counter()
    items = run.items()
    ids = items["item_id"].to_numpy(np.int64)
    holdout = items["holdout"].to_numpy(bool) if "holdout" in items else np.zeros(len(items), bool)
    buckets = items["freq_bucket"].astype(str).to_numpy() if "freq_bucket" in items else None
    split = leave_one_out(run.events(), ids, holdout, r.label, file=str(run / "events.parquet"))
    if len(split.users) == 0:
        raise DataError("no user has 3 or more interactions: nothing to evaluate", file=str(run / "events.parquet"))
    cold = holdout[split.test_target]
    tgt_bucket = None if buckets is None else buckets[split.test_target]
    ks = sorted(set(r.ks) | {5, 10})

    code_sets: dict[str, np.ndarray] = {}
    metrics: dict[str, Any] = {"enabled": True, "protocol": "leave-one-out, full catalogue",
                               "n_test_users": int(len(split.users)), "n_cold_test_users": int(cold.sum()),
                               "n_items": int(len(ids)), "seeds": list(r.seeds), "ks": ks}
    metrics.update(split.counts)
    if "aligned_codes" in r.methods:
        code_sets["aligned_codes"] = read_rq_codes(run.require("codes.parquet", "quantize"), ids)
        metrics["aligned_codes_embedding"] = cfg.quantize.embedding
    if "raw_codes" in r.methods:
        emb_raw = read_npy(run.require("emb_raw.npy", "align"))
        if emb_raw.ndim != 2 or emb_raw.shape[0] != len(ids):
            raise DataError(f"expected {len(ids)} rows (one per item), got shape {emb_raw.shape}",
                            file=str(run / "emb_raw.npy"))
        raw_q = build_rq(cfg.quantize, cfg.seed).fit(np.ascontiguousarray(emb_raw[~holdout], np.float32))
        code_sets["raw_codes"] = raw_q.transform(np.ascontiguousarray(emb_raw, np.float32)).astype(np.int64)
        raw_q.save(run.subdir("retrieve/raw_quant"))
    for name, codes in code_sets.items():
        stats = collision_stats(codes)
        metrics[f"{name}_collision_rate"] = stats["collision_rate"]
        metrics[f"{name}_max_items_per_code"] = stats["max_items_per_code"]

    with _torch_threads(r.threads):
        for method in r.methods:
            t0 = time.perf_counter()
            per_seed, info = [], []
            for seed in (r.seeds if method != "popularity" else r.seeds[:1]):  # popularity has no randomness
                ranked, extra = _fit_recommend(method, r, seed, split, code_sets.get(method), len(ids),
                                               run.subdir(f"retrieve/{method}/seed{seed}"))
                per_seed.append(retrieval_figures(ranked, split.test_target, ks, cold, tgt_bucket))
                info.append(extra)
            figs = mean_std_over_seeds(per_seed)
            if info[0]:
                figs.update(mean_std_over_seeds(info))
            figs["wall_s"] = round(time.perf_counter() - t0, 3)
            metrics[method] = figs
    metrics["wall_s"] = round(time.perf_counter() - t_stage, 3)
    write_json(out_dir / "retrieve.json", {"methods": list(r.methods), "seeds": list(r.seeds),
                                           "n_test_users": metrics["n_test_users"]})
    return metrics


def _fit_recommend(method: str, r: RetrieveConfig, seed: int, split, codes: np.ndarray | None, n_items: int,
                   folder) -> tuple[np.ndarray, dict]:
    """Fit one method on the split's training sequences; its top-beam_size lists for the test users."""
    if method == "popularity":
        from qarm.retrieve.popularity import PopularityRetriever

        pop = PopularityRetriever(exclude_history=r.exclude_history).fit(n_items, split.train)
        return pop.recommend(split.test_hist, r.beam_size), {}
    if method == "sasrec":
        from qarm.retrieve.sasrec import SASRecRetriever

        model = SASRecRetriever(**_model_kwargs(r, seed)).fit(n_items, split.train, split.valid_hist,
                                                               split.valid_target, folder / "checkpoint.pt")
    else:
        from qarm.retrieve.model import GenerativeRetriever

        model = GenerativeRetriever(**_model_kwargs(r, seed)).fit(codes, split.train, split.valid_hist,
                                                                   split.valid_target, folder / "checkpoint.pt")
    save_torch(folder / "model.pt", {"params": model.get_params(), "state": model.net_.state_dict()})
    t0 = time.perf_counter()
    ranked = model.recommend(split.test_hist, r.beam_size)
    log = model.fit_log_
    return ranked, {"best_epoch": log.best_epoch, "epochs_run": log.epochs_run, "best_valid_recall@10": log.best_valid,
                    "train_s": round(log.train_seconds, 3), "test_decode_s": round(time.perf_counter() - t0, 3)}
