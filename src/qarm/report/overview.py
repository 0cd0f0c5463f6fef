"""Report sections: pipeline summary (manifest) and the prepared data (prepare stage)."""

from __future__ import annotations

import json

import numpy as np

from qarm import __version__
from qarm.io import read_json, read_parquet
from qarm.report import html as H
from qarm.report.context import ReportContext, flatten, lookup, number
from qarm.report.plots import PALETTE, bars, new_figure
from qarm.runner import STAGES, is_fresh


def not_run(ctx: ReportContext, stage: str, what: str) -> str:
    """The sentence a section shows when its stage has not run in this run directory."""
    return H.note(f"The {stage} stage has not run in this run directory, so there are no {what} to show "
                  f"(run: qarm run CONFIG --out {ctx.run.path} --stages {stage}).")


def all_figures(ctx: ReportContext, stage: str) -> str:
    """Every figure the stage wrote to metrics.json, flattened, in a collapsed table."""
    figures = flatten(ctx.stage_metrics(stage))
    if not figures:
        return ""
    rows = [(k, v if isinstance(v, (int, float, str, bool, list)) or v is None else json.dumps(v)) for k, v in figures]
    return H.details(f"All {len(rows)} figures the {stage} stage wrote to metrics.json",
                     H.table(["key", "value"], rows, numeric=[False, True]))


def headlines(ctx: ReportContext) -> list[str]:
    """One sentence per stage that has run, with the figure that stage is about."""
    from qarm.report.context import mean_std

    out = []
    m = ctx.stage_metrics("prepare")
    if m:
        out.append(f"Data: {fmt_int(m.get('n_users'))} users, {fmt_int(m.get('n_items'))} items "
                   f"({fmt_int(m.get('n_cold_items'))} cold), {fmt_int(m.get('n_events'))} events.")
    m = ctx.stage_metrics("pairs")
    if m:
        line = f"Pairs: {fmt_int(lookup(m, 'n_u2i'))} U2I and {fmt_int(lookup(m, 'n_i2i'))} Swing I2I pairs"
        mined, rand = number(lookup(m, "same_business_cluster.mined")), number(lookup(m, "same_business_cluster.random"))
        if mined is not None and rand is not None:
            line += f"; {mined:.1%} share a business cluster (random pairs: {rand:.1%})"
        out.append(line + ".")
    m = ctx.stage_metrics("align")
    raw, al = number(lookup(m, "raw.recall@50")), number(lookup(m, "aligned.recall@50"))
    if raw is not None and al is not None:
        out.append(f"Alignment: item-to-item Recall@50 on valid pairs {raw:.3f} raw, {al:.3f} aligned.")
    m = ctx.stage_metrics("quantize")
    coll, uniq = number(lookup(m, "rq.collision_rate")), number(lookup(m, "rq.unique_sid_ratio"))
    if coll is not None and uniq is not None:
        out.append(f"Codes: RQ {lookup(m, 'rq.sizes')} leaves {coll:.1%} of items sharing their full code "
                   f"(unique-SID ratio {uniq:.3f}).")
    variants = lookup(ctx.stage_metrics("train"), "variants")
    if isinstance(variants, dict) and variants and ctx.cfg.rank.tasks:
        task = ctx.cfg.rank.tasks[0]
        aucs = {v: mean_std(lookup(d, f"{task}.auc")) for v, d in variants.items()}
        aucs = {v: ms for v, ms in aucs.items() if ms[0] is not None and ms[0] == ms[0]}
        if aucs:
            best = max(aucs, key=lambda v: aucs[v][0])
            line = f"Ranking ({task}): best test AUC {aucs[best][0]:.4f} ({best})"
            if "id" in aucs and best != "id":
                line += f", {aucs[best][0] - aucs['id'][0]:+.4f} over the id-only ranker"
            cold = {v: mean_std(lookup(d, f"{task}.cold_auc"))[0] for v, d in variants.items()}
            if cold.get("qarm") is not None and cold.get("id") is not None:
                line += f"; cold-start AUC qarm {cold['qarm']:.4f} against id {cold['id']:.4f}"
            out.append(line + ".")
    return out


def fmt_int(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def pipeline_section(ctx: ReportContext) -> str:
    stages = ctx.manifest.get("stages", {})
    total = sum(float(e.get("wall_s", 0.0)) for name, e in stages.items() if name != "report")
    out = [H.cards([("experiment", ctx.cfg.name), ("seed", ctx.cfg.seed), ("data source", ctx.cfg.data.source),
                    ("qarm version", __version__), ("stages run", f"{sum(s.name in stages for s in STAGES[:-1])} of "
                                                                   f"{len(STAGES) - 1}"),
                    ("pipeline wall time", f"{total:.1f} s")])]
    lines = headlines(ctx)
    if lines:
        out.append(H.h3("Headline results"))
        out.append("<ul>" + "".join(f"<li>{H.esc(line)}</li>" for line in lines) + "</ul>")
    out.append(H.h3("Stages"))
    rows, timed = [], []
    for stage in STAGES:
        entry = stages.get(stage.name)
        if stage.name == "report":
            status = "writing this report"
        elif entry is None:
            status = "not run"
        else:
            status = "done" if is_fresh(ctx.cfg, ctx.run, stage) else "done, stale (config or inputs changed since)"
        rows_written = ", ".join(f"{name}: {n:,}" for name, n in (entry or {}).get("rows", {}).items() if n is not None)
        wall = (entry or {}).get("wall_s")
        rows.append((stage.name, status, wall, rows_written or "–", (entry or {}).get("config_hash", "–"),
                     (entry or {}).get("finished_at", "–")))
        if wall is not None and stage.name != "report":
            timed.append((stage.name, float(wall)))
    out.append(H.table(["stage", "status", "wall time (s)", "rows written", "config hash", "finished at"], rows,
                       numeric=[False, False, True, False, False, False]))
    if timed:
        fig, (ax,) = new_figure(height=0.5 + 0.45 * len(timed))
        names = [n for n, _ in timed][::-1]
        walls = [w for _, w in timed][::-1]
        ax.barh(names, walls, color=PALETTE[0])
        for y, w in enumerate(walls):
            ax.annotate(f"{w:.1f} s", (w, y), va="center", fontsize=8, xytext=(3, 0), textcoords="offset points")
        ax.set_xlabel("wall time (s)")
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.15)
        out.append(ctx.plot(fig, "wall time per stage", "Wall time per stage, from manifest.json."))
    else:
        out.append(H.note("No stage has finished in this run directory yet (manifest.json has no entries)."))
    config = read_json(ctx.run / "config.json", default=None)
    if config is not None:
        out.append(H.details("Full configuration of this run (config.json)", H.pre(json.dumps(config, indent=2))))
    return "".join(out)


def prepare_section(ctx: ReportContext) -> str:
    if not ctx.has_run("prepare") and ctx.artifact("items.parquet") is None:
        return not_run(ctx, "prepare", "data figures")
    m = ctx.stage_metrics("prepare")
    out = [H.cards([(k.replace("_", " "), m[k]) for k in ("n_users", "n_items", "n_events", "n_cold_items")
                    if isinstance(m.get(k), (int, float))])]
    items_path, events_path = ctx.artifact("items.parquet"), ctx.artifact("events.parquet")
    items = read_parquet(items_path) if items_path else None
    labels = [c for c in ctx.cfg.data.label_columns]
    events = None
    if events_path:
        import pyarrow.parquet as pq

        present = set(pq.ParquetDataset(events_path).schema.names)  # a file, or a folder (engine=spark)
        events = read_parquet(events_path, columns=["split"] + [c for c in labels if c in present])

    # events per split and modality coverage side by side
    if events is not None:
        counts = events["split"].value_counts()
        order = [s for s in ("train", "valid", "test", "cold_test", "cold_excluded") if s in counts.index]
        split_names, split_counts = order, [int(counts[s]) for s in order]
    else:
        by_split = lookup(m, "n_events_by_split") or {}
        split_names = [s for s in ("train", "valid", "test", *sorted(by_split)) if s in by_split]
        split_counts = [int(by_split[s]) for s in split_names]
    coverage = lookup(m, "modality_coverage")
    if isinstance(coverage, dict):  # metrics.json stores keys sorted; show them in modality order
        coverage = {k: number(coverage[k]) for k in ("text", "image", "audio", *sorted(coverage))
                    if number(coverage.get(k)) is not None}
    elif items is not None:
        coverage = {mod: float(items[f"has_{mod}"].mean()) for mod in ("text", "image", "audio") if f"has_{mod}" in items}
    if split_names or coverage:
        fig, axes = new_figure(ncols=2, width=9.5, height=3.2)
        if split_names:
            bars(axes[0], split_names, split_counts, color=[PALETTE[i] for i in range(len(split_names))], fmt="{:,.0f}")
            axes[0].set_title("events per split", fontsize=10)
            axes[0].tick_params(axis="x", labelsize=8, rotation=15)
            axes[0].margins(y=0.15)
        if coverage:
            bars(axes[1], list(coverage), [float(v) for v in coverage.values()], color=PALETTE[2], fmt="{:.1%}")
            axes[1].set_ylim(0, 1.12)
            axes[1].set_title("share of items with each modality", fontsize=10)
        out.append(ctx.plot(fig, "events per split and modality coverage",
                            "Left: events per split (cold_* are events of the held-out cold-start items). "
                            "Right: share of items whose text / image / audio is present and usable."))

    if items is not None and "train_count" in items:
        fig, axes = new_figure(ncols=2, width=9.5, height=3.2)
        tc = np.sort(items["train_count"].to_numpy())[::-1]
        axes[0].plot(np.arange(1, len(tc) + 1), np.maximum(tc, 0.8), color=PALETTE[0])
        axes[0].set_xscale("log")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("item rank")
        axes[0].set_ylabel("train events")
        axes[0].set_title("item popularity (train split)", fontsize=10)
        if "freq_bucket" in items:
            from qarm.data.split import bucket_labels

            order = [b for b in bucket_labels(list(ctx.cfg.split.freq_bucket_edges)) if b in set(items["freq_bucket"])]
            order += sorted(set(items["freq_bucket"]) - set(order))
            cold = items["cold"] if "cold" in items else np.zeros(len(items), dtype=bool)
            warm_n = [int(((items["freq_bucket"] == b) & ~cold).sum()) for b in order]
            cold_n = [int(((items["freq_bucket"] == b) & cold).sum()) for b in order]
            x = np.arange(len(order))
            axes[1].bar(x, warm_n, color=PALETTE[0], label="warm")
            axes[1].bar(x, cold_n, bottom=warm_n, color=PALETTE[3], label="cold")
            axes[1].set_xticks(x, order)
            axes[1].set_xlabel("train events per item")
            axes[1].set_title("items per frequency bucket", fontsize=10)
            axes[1].legend(fontsize=8, frameon=False)
        out.append(ctx.plot(fig, "item popularity and frequency buckets",
                            "Left: train events per item by popularity rank (log-log). Right: items per frequency "
                            "bucket, split into warm and cold-start items."))

    if events is not None and any(c in events for c in labels):
        rows = []
        for split, group in events.groupby("split", sort=False):
            rows.append([split, len(group)] + [float(group[c].mean()) if c in group else None for c in labels])
        rows.sort(key=lambda r: ["train", "valid", "test", "cold_test", "cold_excluded"].index(r[0])
                  if r[0] in ("train", "valid", "test", "cold_test", "cold_excluded") else 9)
        out.append(H.h3("Positive rate per label and split"))
        out.append(H.table(["split", "events"] + [f"{c} rate" for c in labels], rows,
                           numeric=[False] + [True] * (1 + len(labels))))

    skipped = lookup(m, "skipped")
    if isinstance(skipped, dict):
        out.append(H.h3("Rows skipped while loading"))
        nonzero = [(k, v) for k, v in skipped.items() if v]
        out.append(H.table(["reason", "count"], nonzero, numeric=[False, True]) if nonzero
                   else H.para("Nothing was skipped: every row passed validation."))
    out.append(all_figures(ctx, "prepare"))
    return "".join(out)
