"""A run directory built by the test: every stage's artifacts in the documented formats (docs/architecture.md),
written through qarm.io, with figures under the metrics keys the stage issues name."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qarm.config import Config, load_config
from qarm.io import path_sha256, write_json, write_npy, write_parquet
from qarm.runner import STAGE_BY_NAME, RunDir

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Animation"]
VARIANTS = ["id", "frozen_mm", "ia_rep", "vq", "rq", "qarm"]
STAGE_ORDER = ["prepare", "pairs", "align", "quantize", "train", "retrieve"]


def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_prepare(run: Path, rng: np.random.Generator, n_items: int = 300, n_users: int = 120,
                  n_events: int = 6000) -> dict:
    item_ids = np.arange(1, n_items + 1, dtype=np.int64) * 3
    business = rng.integers(0, 6, size=n_items)
    pop = rng.zipf(1.6, size=n_items).astype(float)
    item_row = rng.choice(n_items, size=n_events, p=pop / pop.sum())
    ts = np.sort(rng.integers(1_000_000, 2_000_000, size=n_events))
    holdout = (rng.random(n_items) < 0.15) & (pop < 3)  # a held-out blockbuster would swamp the splits
    split = np.where(ts < 1_800_000, "train", np.where(ts < 1_900_000, "valid", "test")).astype(object)
    held = holdout[item_row]
    split[held] = np.where(ts[held] >= 1_900_000, "cold_test", "cold_excluded")
    events = pd.DataFrame({"user_id": rng.integers(1, n_users + 1, size=n_events).astype(np.int64),
                           "item_id": item_ids[item_row], "timestamp": ts.astype(np.int64),
                           "click": (rng.random(n_events) < 0.55).astype(np.int8),
                           "like": (rng.random(n_events) < 0.2).astype(np.int8),
                           "rating": rng.integers(1, 6, size=n_events).astype(np.float32), "split": split})
    train_count = np.bincount(item_row[split == "train"], minlength=n_items).astype(np.int64)
    from qarm.data.split import freq_buckets

    genres = [", ".join(rng.choice(GENRES, size=rng.integers(1, 3), replace=False)) for _ in range(n_items)]
    has_image = rng.random(n_items) < 0.95
    items = pd.DataFrame({
        "item_id": item_ids, "title": [f"Movie <{i}> & co" for i in item_ids], "description": "", "tags": "",
        "category": genres, "text": [f"Movie {i}. Genres: {g}" for i, g in zip(item_ids, genres)],
        "image": [f"/data/posters/{i}.jpg" if h else None for i, h in zip(item_ids, has_image)], "audio": None,
        "has_text": True, "has_image": has_image, "has_audio": False, "holdout": holdout,
        "cold": holdout | (train_count == 0), "train_count": train_count,
        "freq_bucket": freq_buckets(train_count, [0, 5, 20, 100])})
    write_parquet(run / "items.parquet", items)
    write_parquet(run / "events.parquet", events)
    (run / "data").mkdir(exist_ok=True)
    write_parquet(run / "data" / "ground_truth.parquet",
                  pd.DataFrame({"item_id": item_ids, "topic": rng.integers(0, 8, size=n_items).astype(np.int64),
                                "business": business.astype(np.int64)}))
    counts = pd.Series(split).value_counts()
    return {"n_users": n_users, "n_items": n_items, "n_events": n_events, "n_cold_items": int(items["cold"].sum()),
            "n_events_by_split": {s: int(counts.get(s, 0)) for s in ("train", "valid", "test")},
            "skipped": {"duplicate_events": 3, "unknown_item": 0, "undecodable_image": int((~has_image).sum())},
            "modality_coverage": {"text": 1.0, "image": float(has_image.mean()), "audio": 0.0}}


def write_pairs(run: Path, rng: np.random.Generator) -> dict:
    item_ids = pd.read_parquet(run / "items.parquet")["item_id"].to_numpy()
    n = 2500
    src = np.where(rng.random(n) < 0.6, "u2i", "i2i")
    score = np.where(src == "u2i", rng.beta(5, 2, size=n), rng.gamma(2.0, 0.05, size=n)).astype(np.float32)
    pairs = pd.DataFrame({"trigger_id": rng.choice(item_ids[:250], size=n), "target_id": rng.choice(item_ids[:250], size=n),
                          "source": src, "score": score})
    pairs = pairs[pairs.trigger_id != pairs.target_id].reset_index(drop=True)
    write_parquet(run / "pairs.parquet", pairs)
    (run / "pairs").mkdir(exist_ok=True)
    write_npy(run / "pairs" / "u2i_item_emb.npy", _l2(rng.standard_normal((len(item_ids), 16))))
    return {"n_u2i": int((pairs.source == "u2i").sum()), "n_i2i": int((pairs.source == "i2i").sum()),
            "n_pairs": len(pairs), "item_coverage": 0.83, "u2i_recall@10": 0.081, "u2i_recall@50": 0.243,
            "u2i_recall@100": 0.35, "popularity_recall@10": 0.05, "popularity_recall@50": 0.171,
            "popularity_recall@100": 0.29,
            "same_business_cluster": {"mined": 0.61, "u2i": 0.57, "i2i": 0.66, "random": 0.17, "content_nn": 0.32},
            "same_topic": {"mined": 0.12, "u2i": 0.1, "i2i": 0.13, "random": 0.06, "content_nn": 0.97},
            "content_space": "TF-IDF of items.parquet text (raw content, no alignment)"}


def write_align(run: Path, rng: np.random.Generator) -> dict:
    business = pd.read_parquet(run / "data" / "ground_truth.parquet")["business"].to_numpy()
    n = len(business)
    centres = rng.standard_normal((6, 24))
    write_npy(run / "emb_raw.npy", _l2(rng.standard_normal((n, 48))))
    write_npy(run / "emb_aligned.npy", _l2(centres[business] * 2.0 + rng.standard_normal((n, 24))))
    (run / "align").mkdir(exist_ok=True)
    write_json(run / "align" / "encoder.json", {"dim": 24})
    # flat dotted keys, as the align stage writes them
    return {"raw.recall@10": 0.021, "raw.recall@50": 0.074, "raw.cold_recall@10": 0.004, "raw.cold_recall@50": 0.02,
            "raw.business_nmi": 0.08, "raw.business_precision@10": 0.21,
            "aligned.recall@10": 0.094, "aligned.recall@50": 0.281, "aligned.cold_recall@10": 0.03,
            "aligned.cold_recall@50": 0.11, "aligned.business_nmi": 0.57, "aligned.business_precision@10": 0.66,
            "n_valid_pairs": 812, "n_valid_pairs_cold_target": 40, "mode": "head", "fusion": "mlp", "dim": 24,
            "raw_dim": 48, "epochs": 5, "modalities": ["text", "image"], "n_train_pairs": 2489,
            "loss_history": [5.1, 4.2, 3.7, 3.5, 3.4], "temperature": 0.052}


def write_quantize(run: Path, rng: np.random.Generator, sizes=(8, 8, 8), k: int = 5) -> dict:
    item_ids = pd.read_parquet(run / "items.parquet")["item_id"].to_numpy()
    n = len(item_ids)
    rq = np.stack([rng.choice(s, size=n, p=np.arange(s, 0, -1) / np.arange(s, 0, -1).sum()) for s in sizes], 1)
    vq = np.stack([rng.choice(n, size=k, replace=False) for _ in range(n)])
    write_parquet(run / "codes.parquet", pd.DataFrame({"item_id": item_ids, "vq": list(vq.astype(np.int32)),
                                                       "rq": list(rq.astype(np.int32))}))
    (run / "quant").mkdir(exist_ok=True)
    write_npy(run / "quant" / "vq_pool_ids.npy", item_ids)
    _, counts = np.unique(rq, axis=0, return_counts=True)
    return {"rq": {"levels": len(sizes), "sizes": list(sizes), "collision_rate": 0.41, "unique_sid_ratio": len(counts) / n,
                   "max_items_per_code": int(counts.max()), "utilization": [1.0, 1.0, 0.875],
                   "perplexity": [7.1, 6.8, 6.5], "rel_recon_error": [0.71, 0.55, 0.43]},
            "vq": {"k": k, "pool_size": n, "distinct_codes_used": int(len(np.unique(vq)))}}


def write_train(run: Path, rng: np.random.Generator) -> dict:
    (run / "rank").mkdir(exist_ok=True)
    write_json(run / "rank" / "variants.json", VARIANTS)
    variants, buckets = {}, {}
    for i, v in enumerate(VARIANTS):
        variants[v], buckets[v] = {}, {}
        for task, base in (("click", 0.70), ("like", 0.74)):
            auc = base + 0.006 * i
            variants[v][task] = {k: {"mean": m, "std": s} for k, m, s in (
                ("auc", auc, 0.002 + 0.001 * rng.random()), ("gauc", auc - 0.04, 0.003),
                ("logloss", 0.6 - 0.004 * i, 0.001), ("cold_auc", 0.55 + 0.015 * i, 0.01),
                ("cold_gauc", 0.53 + 0.01 * i, 0.02), ("cold_logloss", 0.65, 0.002))}
            buckets[v][task] = {b: auc - d for b, d in  # mean over seeds, as the train stage writes
                                (("0", 0.12), ("1-4", 0.08), ("5-19", 0.04), ("20-99", 0.01), ("100+", 0.0))}
        variants[v]["best_epoch"] = {"mean": 2.0, "std": 0.5}
    return {"variants": variants, "buckets": buckets, "default_variant": "qarm",
            "throughput": {"train_samples_per_s": 41000.0, "eval_samples_per_s": 150000.0}}


def write_retrieve(run: Path, rng: np.random.Generator) -> dict:
    """The retrieve stage's figures: per method, mean/std over two seeds (popularity: one number)."""
    (run / "retrieve").mkdir(exist_ok=True)
    out = {"enabled": True, "n_test_users": 943, "n_cold_test_users": 41, "n_items": 1682, "seeds": [0, 1],
           "ks": [1, 5, 10, 20], "aligned_codes_collision_rate": 0.05, "raw_codes_collision_rate": 0.07, "wall_s": 600.0}
    for i, method in enumerate(("aligned_codes", "raw_codes", "sasrec", "popularity")):
        base = 0.12 - 0.02 * i
        fig = {"recall@5": base / 2, "recall@10": base, "ndcg@5": base / 4, "ndcg@10": base / 3,
               "cold_recall@10": 0.05 if i < 2 else 0.0,
               "recall_by_k": {str(k): base * k / 10 for k in (1, 5, 10, 20)},
               "recall@10_by_bucket": {"0": base / 3, "5-19": base / 2, "100+": base * 1.5}}
        if method != "popularity":
            fig = {k: {b: {"mean": x, "std": 0.01} for b, x in v.items()} if isinstance(v, dict)
                   else {"mean": v, "std": 0.005 + 0.001 * rng.random()} for k, v in fig.items()}
            fig["train_s"] = {"mean": 120.0, "std": 3.0}
        out[method] = fig
    return out


WRITERS = {"prepare": write_prepare, "pairs": write_pairs, "align": write_align, "quantize": write_quantize,
           "train": write_train, "retrieve": write_retrieve}


def record(cfg: Config, run: Path, stage: str, figures: dict, wall_s: float) -> None:
    """What qarm.runner records after a stage: figures under its metrics key, a manifest entry."""
    rd = RunDir(run)
    spec = STAGE_BY_NAME[stage]
    rd.set_metrics(spec.metrics_key, figures)
    manifest = rd.manifest()
    manifest["stages"][stage] = {
        "config_hash": cfg.section_hash(spec.sections),
        "inputs": {n: path_sha256(run / n) if (run / n).exists() else None for n in spec.inputs},
        "outputs": {n: path_sha256(run / n) if (run / n).exists() else None for n in spec.outputs},
        "version": "0.1.0", "wall_s": wall_s,
        "rows": {n: (len(pd.read_parquet(run / n)) if n.endswith(".parquet") else None)
                 for n in spec.outputs if (run / n).is_file()},
        "finished_at": "2026-11-24T16:00:00+0000"}
    write_json(run / "manifest.json", manifest)


@pytest.fixture
def fake_run(tmp_path):
    """``fake_run(stages, cfg=None)`` -> (cfg, run dir) with those stages' artifacts, figures and manifest."""

    def make(stages=tuple(STAGE_ORDER), cfg: Config | None = None) -> tuple[Config, Path]:
        cfg = cfg or load_config(None, ["name=report-test", "report.projection_max_items=200"])
        run = tmp_path / "run"
        run.mkdir(exist_ok=True)
        write_json(run / "config.json", cfg.to_dict())
        rng = np.random.default_rng(7)
        for i, stage in enumerate(STAGE_ORDER):
            if stage in stages:
                record(cfg, run, stage, WRITERS[stage](run, rng), wall_s=3.5 * (i + 1))
        return cfg, run

    return make


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is needed to check the report renders: apt-get install -y chromium")
    return path


def render(chromium: str, html: Path, screenshot: Path | None = None, height: int = 6000) -> str:
    """The DOM of ``html`` after load in headless Chromium (one launch; a screenshot too if asked)."""
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile, nothing left in the run directory
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--virtual-time-budget=10000", f"--user-data-dir={profile}", "--dump-dom"]
        if screenshot is not None:
            cmd += [f"--screenshot={screenshot}", f"--window-size=1280,{height}"]
        done = subprocess.run(cmd + [html.as_uri()], capture_output=True, timeout=120, check=True, text=True)
    return done.stdout
