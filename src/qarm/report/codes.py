"""Report section: code usage and collisions of the quantize stage's VQ and RQ codes."""

from __future__ import annotations

import numpy as np

from qarm.report import html as H
from qarm.report.context import ReportContext, lookup
from qarm.report.overview import all_figures, not_run
from qarm.report.plots import PALETTE, new_figure


def list_column(path, column: str) -> np.ndarray:
    """A fixed-length ``list<int>`` Parquet column as int64 [n, width] (empty [n, 0] when absent)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=[column])
    col = table.column(column).combine_chunks()
    n = len(col)
    if n == 0:
        return np.zeros((0, 0), dtype=np.int64)
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    if flat.size % n:
        raise ValueError(f"{path}: column {column!r} holds lists of different lengths")
    return flat.reshape(n, flat.size // n)


def collision_stats(rq: np.ndarray) -> list[dict[str, float]]:
    """Per prefix depth d = 1..L of int codes [n, L]: distinct codes, unique-SID ratio, collision rate
    (share of items whose prefix another item also has), mean and max items per code."""
    out = []
    n = rq.shape[0]
    for depth in range(1, rq.shape[1] + 1):
        _, inverse, counts = np.unique(rq[:, :depth], axis=0, return_inverse=True, return_counts=True)
        per_item = counts[inverse.ravel()]
        out.append({"depth": depth, "distinct": int(len(counts)), "unique_sid_ratio": len(counts) / n,
                    "collision_rate": float((per_item > 1).mean()), "mean_items": n / len(counts),
                    "max_items": int(counts.max())})
    return out


def codes_section(ctx: ReportContext) -> str:
    if not ctx.has_run("quantize") and ctx.artifact("codes.parquet") is None:
        return not_run(ctx, "quantize", "code statistics")
    m = ctx.stage_metrics("quantize")
    headline = [(label, lookup(m, key)) for label, key in (
        ("RQ levels", "rq.levels"), ("RQ sizes", "rq.sizes"), ("collision rate", "rq.collision_rate"),
        ("unique-SID ratio", "rq.unique_sid_ratio"), ("max items per code", "rq.max_items_per_code"),
        ("held-out items' collision rate", "rq.holdout_collision_rate"), ("VQ K", "vq.k"),
        ("VQ pool size", "vq.pool_size"), ("VQ distinct codes used", "vq.distinct_codes_used"),
        ("VQ neighbour overlap", "vq.neighbor_overlap"))]
    out = [H.cards([(k, v) for k, v in headline if v is not None])]
    per_level = {name: lookup(m, f"rq.{key}") for name, key in (
        ("utilisation", "utilization"), ("perplexity", "perplexity"),
        ("relative reconstruction error", "rel_recon_error"))}
    per_level = {k: v for k, v in per_level.items() if isinstance(v, list) and v}
    if per_level:
        n_levels = max(len(v) for v in per_level.values())
        rows = [[f"level {lvl + 1}"] + [v[lvl] if lvl < len(v) else None for v in per_level.values()]
                for lvl in range(n_levels)]
        out.append(H.h3("RQ-Kmeans per level"))
        out.append(H.table(["level"] + list(per_level), rows, numeric=[False] + [True] * len(per_level)))

    path = ctx.artifact("codes.parquet")
    if path is None:
        out.append(H.note("codes.parquet is missing from the run directory."))
        out.append(all_figures(ctx, "quantize"))
        return "".join(out)
    rq = list_column(path, "rq")
    if rq.size:
        out.append(_rq_usage(ctx, rq, m))
    vq = list_column(path, "vq")
    if vq.size:
        out.append(_vq_usage(ctx, vq))
    out.append(all_figures(ctx, "quantize"))
    return "".join(out)


def _rq_usage(ctx: ReportContext, rq: np.ndarray, m: dict) -> str:
    n, n_levels = rq.shape
    sizes = lookup(m, "rq.sizes")
    if not (isinstance(sizes, list) and len(sizes) == n_levels):
        cfg_sizes = list(ctx.cfg.quantize.rq_sizes)
        sizes = cfg_sizes if len(cfg_sizes) == n_levels else [int(rq[:, lvl].max()) + 1 for lvl in range(n_levels)]
    stats = collision_stats(rq)
    out = [H.h3("Collisions by code prefix (computed from codes.parquet)")]
    out.append(H.table(["prefix", "distinct codes", "unique-SID ratio", "collision rate", "mean items per code",
                        "max items per code"],
                       [["level 1" if s["depth"] == 1 else f"levels 1-{s['depth']}", s["distinct"], s["unique_sid_ratio"],
                         s["collision_rate"], s["mean_items"], s["max_items"]] for s in stats],
                       numeric=[False] + [True] * 5))
    fig, axes = new_figure(ncols=n_levels, width=3.3 * n_levels, height=3.0)
    for lvl, ax in enumerate(axes):
        k = int(sizes[lvl])
        counts = np.sort(np.bincount(rq[:, lvl], minlength=k))[::-1]
        p = counts[counts > 0] / n
        perplexity = float(np.exp(-(p * np.log(p)).sum()))
        ax.bar(np.arange(len(counts)), counts, width=1.0, color=PALETTE[lvl % len(PALETTE)])
        ax.axhline(n / k, color="#333", lw=1, ls="--", label="uniform")
        ax.set_title(f"level {lvl + 1}: {int((counts > 0).sum())}/{k} used, perplexity {perplexity:.1f}", fontsize=9)
        ax.set_xlabel("code (sorted by use)")
        if lvl == 0:
            ax.set_ylabel("items")
            ax.legend(fontsize=8, frameon=False)
    out.append(ctx.plot(fig, "RQ code usage per level",
                        "Items per code at each RQ level, codes sorted by use; the dashed line is a perfectly even "
                        "spread. Unused codes and a steep head both waste code budget."))

    _, counts = np.unique(rq, axis=0, return_counts=True)
    cap = 20  # group sizes above this share one bar
    capped = np.minimum(counts, cap + 1)
    codes_per_size = np.bincount(capped)[1:]                 # [s-1] = codes holding s items
    items_per_size = np.bincount(capped, weights=counts)[1:]  # [s-1] = items in such codes
    labels = [str(s) for s in range(1, min(cap, len(codes_per_size)) + 1)]
    labels += [f">{cap}"] if len(codes_per_size) > cap else []
    fig, axes = new_figure(ncols=2, width=9.5, height=3.0)
    axes[0].bar(labels, codes_per_size, color=PALETTE[0])
    for x, c in enumerate(codes_per_size):
        axes[0].annotate(f"{int(c):,}", (x, c), ha="center", va="bottom", fontsize=7, xytext=(0, 1),
                         textcoords="offset points")
    if codes_per_size.max() > 50 * max(codes_per_size[codes_per_size > 0].min(), 1):
        axes[0].set_yscale("log")  # a few large groups next to many unique codes
    axes[0].set_xlabel("items sharing a full code")
    axes[0].set_ylabel("codes")
    axes[0].set_title("codes by number of items", fontsize=10)
    axes[1].bar(labels, items_per_size / n, color=PALETTE[3])
    axes[1].set_xlabel("items sharing a full code")
    axes[1].set_ylabel("share of items")
    axes[1].set_title("items by size of their code group", fontsize=10)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7)
    out.append(ctx.plot(fig, "items per full RQ code",
                        f"{len(counts):,} distinct full codes for {n:,} items. Left: how many codes hold 1, 2, … items; "
                        "right: the share of items in each group size (size 1 = a unique semantic ID)."))
    return "".join(out)


def _vq_usage(ctx: ReportContext, vq: np.ndarray) -> str:
    n, k = vq.shape
    used = np.bincount(vq.ravel())
    used = np.sort(used[used > 0])[::-1]
    fig, (ax,) = new_figure(width=7.0, height=3.0)
    ax.plot(np.arange(1, len(used) + 1), used, color=PALETTE[4])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pool item (sorted by use)")
    ax.set_ylabel("items whose code holds it")
    ax.set_title(f"VQ: {len(used):,} distinct pool ids used in {n:,} codes of K={k}", fontsize=10)
    return ctx.plot(fig, "VQ pool id usage",
                    "How many items list each pool item among their top-K neighbours (log-log): a flat curve means "
                    "the code vocabulary is used evenly; hubs that appear in most codes carry little information.")
