"""Benchmark of the quantize stage's hot paths, with references measured in the same run.

RQ-Kmeans (L levels of K codes) fit + transform on clustered synthetic embeddings, against
  (a) plain residual k-means, one faiss.Kmeans per level, transform by faiss index search per level
      (the approach of public semantic-ID tokenizers). For a like-for-like fit it trains on the same
      sample as qarm (``--train-points`` rows drawn the same way, faiss's own subsampling off) from
      k-means++ seeds: scikit-learn's ``kmeans_plusplus`` on a ``20 K``-row subsample of each level's
      residuals, the seeding qarm does (greedy k-means++ on 20 K rows), then ``--niter`` faiss Lloyd
      iterations. qarm's fit also runs joint refinement and (balanced) the price rounds, which (a) has
      no counterpart for,
  (b) faiss.ResidualQuantizer with the same L and K (beam-search encoder),
  (c) the GEMM roofline: only the matrix products of the transform (same shapes, same chunks).
VQ top-K over a large pool: exact (faiss flat) against HNSW, recall and speed.

Usage: python benchmarks/bench_quant.py                      # 1M x 128 and 100k x 384, VQ over 1M
       python benchmarks/bench_quant.py --rq 200000x128 --vq-pool 200000 --vq-queries 2000   # quick
"""

from __future__ import annotations

import argparse
import os
import time

import faiss
import numpy as np

from qarm.quant.metrics import collision_stats
from qarm.quant.rq import RQKMeans, _Plan, fixed_rows_matmul
from qarm.quant.synthetic import clustered_embeddings
from qarm.quant.vq import VQCoder


def mse(x: np.ndarray, xhat: np.ndarray) -> float:
    out = 0.0
    for s in range(0, len(x), 65536):
        d = x[s:s + 65536] - xhat[s:s + 65536]
        out += float(np.einsum("ij,ij->", d, d))
    return out / len(x)


def training_sample(x: np.ndarray, train_points: int, seed: int) -> np.ndarray:
    """The rows RQKMeans.fit trains on: ``train_points`` drawn without replacement by ``seed``, in order."""
    n = len(x)
    if not train_points or n <= train_points:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(n, train_points, replace=False))]


def plain_faiss(x: np.ndarray, k: int, levels: int, niter: int, seed: int, train_points: int) -> dict:
    """(a): one faiss.Kmeans per level on the residuals of qarm's training sample, k-means++ seeds."""
    from sklearn.cluster import kmeans_plusplus

    t0 = time.perf_counter()
    r = training_sample(x, train_points, seed).copy()
    rng = np.random.default_rng(seed + 1)
    kms = []
    for level in range(levels):
        seed_rows = r if len(r) <= 20 * k else r[rng.choice(len(r), 20 * k, replace=False)]
        init, _ = kmeans_plusplus(seed_rows, k, random_state=seed + level)
        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed + level, max_points_per_centroid=len(r) + 1,
                          min_points_per_centroid=1)
        km.train(r, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
        r -= km.centroids[km.index.search(r, 1)[1].ravel()]
        kms.append(km)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()  # transform: what a tokenizer does at inference, one index search per level
    r = x.copy()
    codes = np.empty((len(x), levels), np.int32)
    for level, km in enumerate(kms):
        a = km.index.search(r, 1)[1].ravel()
        codes[:, level] = a
        r -= km.centroids[a]
    tr_s = time.perf_counter() - t0
    return {"fit_s": fit_s, "transform_s": tr_s, "mse": float(np.mean(np.einsum("ij,ij->i", r, r))),
            "collision": collision_stats(codes)["collision_rate"]}


def faiss_rq(x: np.ndarray, k: int, levels: int, train_points: int, seed: int) -> dict:
    """(b): faiss.ResidualQuantizer, same L and K (trained on a sample, encodes everything)."""
    rng = np.random.default_rng(seed)
    xt = x if len(x) <= train_points else x[np.sort(rng.choice(len(x), train_points, replace=False))]
    t0 = time.perf_counter()
    rq = faiss.ResidualQuantizer(x.shape[1], levels, int(np.log2(k)))
    rq.train(xt)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes = rq.compute_codes(x)
    tr_s = time.perf_counter() - t0
    return {"fit_s": fit_s, "transform_s": tr_s, "mse": mse(x, rq.decode(codes)),
            "collision": collision_stats(codes)["collision_rate"], "train_points": len(xt)}


def gemm_roofline(x: np.ndarray, codebooks: list[np.ndarray], chunk: int) -> float:
    """(c): seconds for only the matrix products of the transform: the same augmented [b, d + 1] x
    [d + 1, K] products in the same fixed-row blocks and chunks (multi-threaded BLAS)."""
    mats = _Plan(codebooks).mats
    block = np.ones((min(chunk, len(x)), x.shape[1] + 1), np.float32)
    t0 = time.perf_counter()
    for s in range(0, len(x), chunk):
        b = min(chunk, len(x) - s)
        block[:b, :-1] = x[s:s + b]
        for m in mats:
            fixed_rows_matmul(block[:b], m)
    return time.perf_counter() - t0


def bench_rq(n: int, dim: int, k: int, levels: int, args) -> None:
    print(f"\n=== RQ-Kmeans: {n:,} x {dim} float32, L={levels}, K={k} (clustered synthetic) ===", flush=True)
    t0 = time.perf_counter()
    x, _ = clustered_embeddings(n, dim, seed=args.seed)
    print(f"data: {time.perf_counter() - t0:.1f}s ({n // 50:,} Zipf-sized clusters)", flush=True)
    rows = {}
    for balanced in (True, False):
        model = RQKMeans([k] * levels, n_iter=args.niter, balanced=balanced, max_train_points=args.train_points,
                         seed=args.seed)
        t0 = time.perf_counter()
        model.fit(x)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        codes = model.transform(x)
        tr_s = time.perf_counter() - t0
        name = "qarm RQKMeans balanced" if balanced else "qarm RQKMeans plain"
        rows[name] = {"fit_s": fit_s, "transform_s": tr_s, "mse": mse(x, model.inverse_transform(codes)),
                      "collision": collision_stats(codes)["collision_rate"]}
        print(f"  {name}: done", flush=True)
        if balanced:
            roof_s = gemm_roofline(x, model.codebooks_, model.chunk_size)
    rows["(a) faiss.Kmeans per level"] = plain_faiss(x, k, levels, args.niter, args.seed, args.train_points)
    print("  (a): done", flush=True)
    if not args.skip_faiss_rq:
        rows["(b) faiss.ResidualQuantizer"] = faiss_rq(x, k, levels, args.faiss_rq_train, args.seed)
        print("  (b): done", flush=True)
    rows["(c) GEMM roofline"] = {"fit_s": float("nan"), "transform_s": roof_s, "mse": float("nan"),
                                 "collision": float("nan")}
    print(f"{'method':32s} {'fit s':>8s} {'transform s':>12s} {'items/s':>11s} {'MSE':>9s} {'collision':>10s}")
    for name, r in rows.items():
        print(f"{name:32s} {r['fit_s']:8.1f} {r['transform_s']:12.2f} {n / r['transform_s']:11,.0f} "
              f"{r['mse']:9.5f} {r['collision']:10.4f}")
    ours, a = rows["qarm RQKMeans balanced"], rows["(a) faiss.Kmeans per level"]
    print("ratios (qarm balanced vs reference):")
    print(f"  transform items/s vs (a): {a['transform_s'] / ours['transform_s']:.2f}x   (goal >= 1)")
    print(f"  transform items/s vs (c) GEMM roofline: {roof_s / ours['transform_s']:.2f} of the roofline")
    print(f"  collision rate vs (a): {ours['collision'] / max(a['collision'], 1e-12):.3f}   (goal <= 0.5)")
    print(f"  MSE vs (a): {ours['mse'] / a['mse']:.4f}   (goal <= 1.05)")
    print(f"  fit time vs (a): {ours['fit_s'] / a['fit_s']:.2f}x")
    if "(b) faiss.ResidualQuantizer" in rows:
        b = rows["(b) faiss.ResidualQuantizer"]
        print(f"  MSE vs (b): {ours['mse'] / b['mse']:.4f}; fit+transform time vs (b): "
              f"{(ours['fit_s'] + ours['transform_s']) / (b['fit_s'] + b['transform_s']):.2f}x")


def bench_vq(pool: int, queries: int, dim: int, k: int, args) -> None:
    print(f"\n=== VQ top-{k}: pool {pool:,} x {dim}, {queries:,} queries (pool items, self excluded) ===", flush=True)
    x, _ = clustered_embeddings(pool, dim, seed=args.seed + 1)
    ids = np.arange(pool, dtype=np.int64)
    q = np.sort(np.random.default_rng(args.seed).choice(pool, queries, replace=False))
    res = {}
    for kind in ("flat", "hnsw"):
        coder = VQCoder(k, index=kind, hnsw_m=args.hnsw_m, ef_search=args.ef_search)
        t0 = time.perf_counter()
        coder.fit(x, ids)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        codes = coder.transform(x[q], item_ids=ids[q])
        search_s = time.perf_counter() - t0
        res[kind] = (build_s, search_s, codes)
        print(f"  {kind:5s}: build {build_s:7.1f}s  search {search_s:7.2f}s  {queries / search_s:10,.0f} queries/s",
              flush=True)
    exact, approx = res["flat"][2], res["hnsw"][2]
    both = np.sort(np.concatenate([exact, approx], axis=1), axis=1)
    recall = float(((both[:, 1:] == both[:, :-1]).sum(1) / k).mean())
    print(f"  HNSW (M={args.hnsw_m}, efSearch={args.ef_search}) recall@{k} vs exact: {recall:.4f}; "
          f"search speed-up vs exact: {res['flat'][1] / res['hnsw'][1]:.1f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rq", default="1000000x128,100000x384", help="comma-separated NxDIM sizes ('' to skip)")
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--niter", type=int, default=20, help="k-means iterations (qarm and reference a)")
    p.add_argument("--train-points", type=int, default=131_072, help="qarm k-means sample per level")
    p.add_argument("--faiss-rq-train", type=int, default=100_000, help="faiss.ResidualQuantizer training sample")
    p.add_argument("--skip-faiss-rq", action="store_true")
    p.add_argument("--vq-pool", type=int, default=1_000_000, help="0 to skip the VQ benchmark")
    p.add_argument("--vq-queries", type=int, default=2_000)
    p.add_argument("--vq-dim", type=int, default=128)
    p.add_argument("--vq-k", type=int, default=25)
    p.add_argument("--hnsw-m", type=int, default=16)
    p.add_argument("--ef-search", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0 = faiss default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    print(f"cores: {os.cpu_count()}, faiss threads: {faiss.omp_get_max_threads()}, faiss {faiss.__version__}, "
          f"numpy {np.__version__}")
    print_load("start")
    t0 = time.perf_counter()
    for spec in filter(None, args.rq.split(",")):
        n, dim = (int(v) for v in spec.lower().split("x"))
        bench_rq(n, dim, args.k, args.levels, args)
    if args.vq_pool:
        bench_vq(args.vq_pool, args.vq_queries, args.vq_dim, args.vq_k, args)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    print_load("end")


def print_load(when: str) -> None:
    """Machine load (1, 5, 15 min averages): figures measured above ~0.5 per core are not a quiet machine's."""
    one, five, fifteen = os.getloadavg()
    cores = os.cpu_count() or 1
    quiet = "quiet" if five <= 0.5 * cores else "NOT quiet: other work is running, ratios are unreliable"
    print(f"load average at {when}: {one:.2f} / {five:.2f} / {fifteen:.2f} on {cores} cores ({quiet})", flush=True)


if __name__ == "__main__":
    main()
