"""Report section: generative retrieval (retrieve stage): table, recall curves by K, per frequency bucket."""

from __future__ import annotations

import numpy as np

from qarm.report import html as H
from qarm.report.context import ReportContext, lookup, mean_std
from qarm.report.overview import all_figures, not_run
from qarm.report.plots import PALETTE, grouped_bars, new_figure

METHODS = (("aligned_codes", "generative, aligned codes"), ("raw_codes", "generative, raw codes"),
           ("sasrec", "SASRec (item IDs)"), ("popularity", "popularity"))
COLUMNS = (("recall@5", "Recall@5"), ("recall@10", "Recall@10"), ("ndcg@5", "NDCG@5"), ("ndcg@10", "NDCG@10"),
           ("cold_recall@10", "cold Recall@10"))


def retrieval_section(ctx: ReportContext) -> str:
    m = ctx.stage_metrics("retrieve")
    if not m:
        return not_run(ctx, "retrieve", "retrieval results")
    if m.get("enabled") is False:
        return H.note("The retrieve stage is off in this config (retrieve.enabled: false); turn it on to compare "
                      "generative retrieval over the codes with SASRec and popularity.")
    methods = [(k, label) for k, label in METHODS if isinstance(m.get(k), dict)]
    if not methods:
        return H.note("The retrieve stage ran but wrote no per-method figures.")
    seeds = m.get("seeds") or []
    out = [H.para(
        f"Leave-one-out per user (last interaction test, second last valid), ranked over the whole catalogue of "
        f"{m.get('n_items', '?')} items, {m.get('n_test_users', '?')} test users, of whom "
        f"{m.get('n_cold_test_users', '?')} have a held-out (cold) item as target. Generative retrieval decodes "
        "code tuples by beam search constrained to tuples that exist; items a user already has are never "
        f"recommended, by any method. {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); figures are "
        "mean ± std over seeds where there are several. Best per column in bold green.")]
    best = {key: max((mean_std(m[k].get(key))[0] or -1.0) for k, _ in methods) for key, _ in COLUMNS}
    rows, highlight = [], []
    for k, label in methods:
        row = [label]
        for key, _ in COLUMNS:
            mean, std = mean_std(m[k].get(key))
            row.append(H.fmt_mean_std(mean, std))
        row.append(H.fmt_mean_std(*mean_std(m[k].get("train_s")), digits=1))
        rows.append(row)
        highlight.append(mean_std(m[k].get("recall@10"))[0] == best["recall@10"])
    out.append(H.table(["method"] + [c for _, c in COLUMNS] + ["train s"], rows,
                       numeric=[False] + [True] * (len(COLUMNS) + 1), highlight=highlight))
    out.append(_curves(ctx, m, methods))
    out.append(_buckets(ctx, m, methods))
    extra = [(label, lookup(m, key)) for label, key in (
        ("aligned codes' collision rate", "aligned_codes_collision_rate"),
        ("raw codes' collision rate", "raw_codes_collision_rate"), ("held-out events dropped from histories",
                                                                   "n_holdout_events_dropped"),
        ("users too short (< 3 interactions)", "n_users_too_short"), ("stage wall time, s", "wall_s"))]
    out.append(H.cards([(k, v) for k, v in extra if v is not None]))
    out.append(all_figures(ctx, "retrieve"))
    return "".join(out)


def _curves(ctx: ReportContext, m: dict, methods) -> str:
    fig, (ax,) = new_figure(width=6.0, height=3.2)
    drawn = False
    for i, (k, label) in enumerate(methods):
        curve = m[k].get("recall_by_k")
        if not isinstance(curve, dict) or not curve:
            continue
        ks = sorted(curve, key=int)
        means = np.array([mean_std(curve[x])[0] or np.nan for x in ks], float)
        stds = np.array([mean_std(curve[x])[1] or 0.0 for x in ks], float)
        x = np.array([int(v) for v in ks])
        ax.plot(x, means, marker="o", color=PALETTE[i % len(PALETTE)], label=label)
        ax.fill_between(x, means - stds, means + stds, color=PALETTE[i % len(PALETTE)], alpha=0.15)
        drawn = True
    if not drawn:
        return ""
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.legend(fontsize=8, frameon=False)
    return ctx.plot(fig, "Recall@K curves", "Recall@K by cut-off K, test users (shaded: ± std over seeds).")


def _buckets(ctx: ReportContext, m: dict, methods) -> str:
    per = {label: m[k].get("recall@10_by_bucket") for k, label in methods}
    per = {k: v for k, v in per.items() if isinstance(v, dict) and v}
    if not per:
        return ""
    buckets = list(next(iter(per.values())))
    series = {label: ([mean_std(v.get(b))[0] if mean_std(v.get(b))[0] is not None else np.nan for b in buckets],
                      [mean_std(v.get(b))[1] or 0.0 for b in buckets]) for label, v in per.items()}
    fig, (ax,) = new_figure(width=7.0, height=3.2)
    grouped_bars(ax, buckets, series)
    ax.set_xlabel("target item's train-split frequency bucket")
    ax.set_ylabel("Recall@10")
    return ctx.plot(fig, "Recall@10 by frequency bucket",
                    "Recall@10 by how often the target item occurs in qarm's train split (bucket 0: cold items).")
