"""Report section: the ranking ablation (train stage): table, AUC/GAUC bars, cold start, frequency buckets."""

from __future__ import annotations

import re

import numpy as np

from qarm.report import html as H
from qarm.report.context import ReportContext, lookup, mean_std
from qarm.report.overview import all_figures, not_run
from qarm.report.plots import grouped_bars, new_figure, shared_legend, zoom_ylim

METRICS = (("auc", "AUC"), ("gauc", "GAUC"), ("logloss", "LogLoss"), ("cold_auc", "cold AUC"))


def _ordered(names, preferred) -> list[str]:
    names = list(names)
    return [p for p in preferred if p in names] + [n for n in names if n not in preferred]


def _bucket_key(label: str) -> tuple[float, str]:
    """Sort buckets by their lower edge: ``0``, ``1-4``, ``5-19``, ``20-99``, ``100+``."""
    found = re.match(r"\s*(\d+)", str(label))
    return (float(found.group(1)) if found else float("inf"), str(label))


def _bucket_auc(value) -> tuple[float | None, float | None]:
    """A bucket's AUC stored as a number, ``{mean, std}``, or ``{"auc": …}`` (beside counts)."""
    if isinstance(value, dict) and "auc" in value:
        return mean_std(value["auc"])
    return mean_std(value)


def ranking_section(ctx: ReportContext) -> str:
    m = ctx.stage_metrics("train")
    variants_m = lookup(m, "variants")
    if not isinstance(variants_m, dict) or not variants_m:
        if ctx.has_run("train"):
            return H.note("The train stage ran but wrote no per-variant figures under rank.variants.")
        return not_run(ctx, "train", "ranking results")
    variants = _ordered(variants_m, ctx.cfg.rank.variants)
    # a task is a key holding per-metric figures; siblings such as best_epoch ({mean, std}) are not
    tasks = _ordered({t for v in variants for t, d in (variants_m[v] or {}).items()
                      if isinstance(d, dict) and "auc" in d}, ctx.cfg.rank.tasks)

    def fig_of(variant: str, task: str, metric: str) -> tuple[float | None, float | None]:
        return mean_std(lookup(variants_m.get(variant, {}), f"{task}.{metric}"))

    seeds = ctx.cfg.rank.seeds
    default = lookup(m, "default_variant")
    out = [H.para(f"Every variant is trained on identical data and splits, with {len(seeds)} seed(s) "
                  f"({', '.join(map(str, seeds))}); figures are mean ± standard deviation over seeds, on the test "
                  "split (cold AUC: test-period events of the held-out cold-start items)"
                  + (": one seed, so no spread." if len(seeds) == 1 else ".") + " Best AUC per task in green."
                  + (f" The variant served by default (best mean valid AUC) is {default}." if default else "")
                  + " The paper's direction is qarm ≥ vq, rq > ia_rep ≥ frozen_mm ≥ id, with the largest gains on "
                    "cold-start items; the Δ columns show how this run compares.")]
    best_epoch = [mean_std(lookup(variants_m.get(v, {}), "best_epoch")) for v in variants]
    for t in tasks:  # one table per task: variants down, figures across
        headers = ["variant"] + [label for _, label in METRICS]
        rows = [[v] + [H.fmt_mean_std(*fig_of(v, t, key)) for key, _ in METRICS] for v in variants]
        if "id" in variants:  # the lift over the id-only ranker is what the ablation is about
            base, base_cold = fig_of("id", t, "auc")[0], fig_of("id", t, "cold_auc")[0]
            headers += ["ΔAUC vs id", "Δcold AUC vs id"]
            for row, v in zip(rows, variants):
                a, c = fig_of(v, t, "auc")[0], fig_of(v, t, "cold_auc")[0]
                row += [f"{a - base:+.4f}" if a is not None and base is not None else "–",
                        f"{c - base_cold:+.4f}" if c is not None and base_cold is not None else "–"]
        if any(ms[0] is not None for ms in best_epoch):
            headers.append("best epoch")
            for row, ms in zip(rows, best_epoch):
                row.append(H.fmt_mean_std(*ms, digits=1))
        aucs = [fig_of(v, t, "auc")[0] for v in variants]
        best = max((a for a in aucs if a is not None and a == a), default=None)
        out.append(H.h3(f"Task {t}"))
        out.append(H.table(headers, rows, numeric=[False] + [True] * (len(headers) - 1),
                           highlight=[a is not None and a == best for a in aucs]))

    fig, axes = new_figure(ncols=2, width=11.0, height=3.6)
    for ax, (key, label) in zip(axes, (("auc", "AUC"), ("gauc", "GAUC"))):
        series = {}
        for t in tasks:
            pairs = [fig_of(v, t, key) for v in variants]
            series[t] = ([np.nan if mu is None else mu for mu, _ in pairs], [0.0 if sd is None else sd for _, sd in pairs])
        grouped_bars(ax, variants, series, annotate=True, legend=False)
        zoom_ylim(ax, [x for mu, _ in series.values() for x in mu], [x for _, sd in series.values() for x in sd],
                  floor=0.0, headroom=0.6)
        ax.set_title(f"test {label} by variant (mean ± std over seeds)", fontsize=10)
        ax.set_ylabel(label)
    shared_legend(fig, axes[0])
    out.append(ctx.plot(fig, "ranking ablation AUC and GAUC",
                        "The ablation: id-only, frozen raw embedding, frozen aligned embedding (ia_rep), VQ codes, "
                        "RQ codes, and both (qarm). Error bars: standard deviation over seeds. The y axis starts "
                        "near the data so differences are visible."))

    if any(fig_of(v, t, "cold_auc")[0] is not None for v in variants for t in tasks):
        fig, axes = new_figure(ncols=max(len(tasks), 1), width=5.3 * max(len(tasks), 1), height=3.4)
        for ax, t in zip(axes, tasks):
            series = {}
            for key, label in (("auc", "all test events"), ("cold_auc", "cold-start items")):
                pairs = [fig_of(v, t, key) for v in variants]
                series[label] = ([np.nan if mu is None else mu for mu, _ in pairs],
                                 [0.0 if sd is None else sd for _, sd in pairs])
            grouped_bars(ax, variants, series, annotate=True, legend=False)
            zoom_ylim(ax, [x for mu, _ in series.values() for x in mu], [x for _, sd in series.values() for x in sd],
                      floor=0.0, headroom=0.6)
            ax.set_title(f"{t}: AUC on cold-start items", fontsize=10)
        shared_legend(fig, axes[0])
        out.append(ctx.plot(fig, "cold-start AUC by variant",
                            "AUC on the held-out items (never seen in training: no id embedding, no pairs) beside "
                            "the AUC on all test events. Content-derived codes are what a cold item can use."))
    else:
        out.append(H.note("No cold-start AUC was recorded (rank.variants.<variant>.<task>.cold_auc)."))

    out.append(_buckets(ctx, variants, tasks, lookup(m, "buckets")))

    counts = [(k, lookup(m, k)) for k in ("n_train", "n_valid", "n_test", "n_cold_test", "n_empty_history",
                                           "n_users_oov", "n_unknown_items") if isinstance(lookup(m, k), int)]
    if counts:
        out.append(H.h3("Events the ranker saw"))
        out.append(H.table(["figure", "events"], [(k.removeprefix("n_").replace("_", " "), v) for k, v in counts],
                           numeric=[False, True]))
    throughput = lookup(m, "throughput")
    if isinstance(throughput, dict) and throughput:
        out.append(H.h3("Throughput"))
        out.append(H.table(["figure", "value"], [(k.replace("_", " "), v) for k, v in throughput.items()],
                           numeric=[False, True]))
    out.append(all_figures(ctx, "train"))
    return "".join(out)


def _buckets(ctx: ReportContext, variants: list[str], tasks: list[str], buckets_m) -> str:
    if not isinstance(buckets_m, dict) or not buckets_m:
        return H.note("No per-frequency-bucket AUC was recorded (rank.buckets).")
    fig, axes = new_figure(ncols=max(len(tasks), 1), width=5.5 * max(len(tasks), 1), height=3.4)
    drawn = 0
    for ax, t in zip(axes, tasks):
        per_variant = {v: lookup(buckets_m.get(v, {}), t) for v in variants}
        per_variant = {v: b for v, b in per_variant.items() if isinstance(b, dict) and b}
        labels = sorted({b for d in per_variant.values() for b in d}, key=_bucket_key)
        if not labels:
            continue
        series = {}
        for v, d in per_variant.items():
            pairs = [_bucket_auc(d.get(b)) for b in labels]
            series[v] = ([np.nan if mu is None else mu for mu, _ in pairs], [0.0 if sd is None else sd for _, sd in pairs])
        grouped_bars(ax, labels, series, legend=False)
        zoom_ylim(ax, [x for mu, _ in series.values() for x in mu], floor=0.0, headroom=0.5)
        ax.set_xlabel("train events of the target item")
        ax.set_ylabel("AUC")
        ax.set_title(f"{t}: test AUC per item-frequency bucket", fontsize=10)
        drawn += 1
    if not drawn:
        return H.note("rank.buckets holds no per-bucket AUC for the tasks of this run.")
    shared_legend(fig, axes[0])
    return ctx.plot(fig, "AUC per frequency bucket",
                    "Test AUC by how often the target item appeared in training (bucket 0: never). Id embeddings "
                    "of rare items are barely trained, so that is where codes shared with popular items should "
                    "help most.")
