"""Report sections: mined pairs (pairs stage) and alignment before/after (align stage)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from qarm.io import read_npy, read_parquet
from qarm.report import html as H
from qarm.report.context import ReportContext, flatten, lookup, number
from qarm.report.overview import all_figures, not_run
from qarm.report.plots import PALETTE, bars, grouped_bars, new_figure, shared_legend
from qarm.report.projection import colour_labels, project_2d, subsample

def _ks(metrics: dict, pattern: str) -> list[int]:
    """The k of every flattened key matching ``pattern`` (a regex with one group for k), sorted."""
    found = {int(mt.group(1)) for key, _ in flatten(metrics) for mt in [re.fullmatch(pattern, key)] if mt}
    return sorted(found)


def pairs_section(ctx: ReportContext) -> str:
    if not ctx.has_run("pairs") and ctx.artifact("pairs.parquet") is None:
        return not_run(ctx, "pairs", "pair statistics")
    m = ctx.stage_metrics("pairs")
    out = [H.cards([(k.replace("_", " "), m[k]) for k in ("n_u2i", "n_i2i", "item_coverage")
                    if isinstance(m.get(k), (int, float))])]
    pairs_path = ctx.artifact("pairs.parquet")
    pairs = read_parquet(pairs_path) if pairs_path else None
    if pairs is not None and len(pairs):
        sources = sorted(pairs["source"].unique())
        fig, axes = new_figure(ncols=1 + len(sources), width=3.3 * (1 + len(sources)), height=3.0)
        per_source = pairs["source"].value_counts()
        bars(axes[0], sources, [int(per_source[s]) for s in sources], color=[PALETTE[i] for i in range(len(sources))],
             fmt="{:,.0f}")
        axes[0].set_title("pairs per source", fontsize=10)
        axes[0].margins(y=0.15)
        for i, s in enumerate(sources):
            score = pairs.loc[pairs["source"] == s, "score"].to_numpy(dtype=np.float64)
            score = score[np.isfinite(score)]
            if score.size:
                heights, _, _ = axes[1 + i].hist(score, bins=40, color=PALETTE[i])
                if heights.max() > 20 * max(np.median(heights[heights > 0]), 1):  # a long tail: log scale shows it
                    axes[1 + i].set_yscale("log")
            axes[1 + i].set_title(f"{s} pair scores", fontsize=10)
            axes[1 + i].set_xlabel("cosine (U2I space)" if s == "u2i" else "Swing score" if s == "i2i" else "score")
        out.append(ctx.plot(fig, "pair counts and score histograms",
                            "Pairs per source, and the distribution of their scores: U2I trigger pairs carry the "
                            "cosine similarity of trigger and target in the U2I item space, Swing I2I pairs their "
                            "Swing score."))
        out.append(_coverage(ctx, pairs))
    elif pairs is not None:
        out.append(H.note("pairs.parquet is empty: no pair was mined."))
    else:
        out.append(H.note("pairs.parquet is missing from the run directory."))

    groups, u2i, pop = [], [], []
    for k in _ks(m, r"(?:u2i|popularity)_recall@(\d+)"):
        a, b = number(lookup(m, f"u2i_recall@{k}")), number(lookup(m, f"popularity_recall@{k}"))
        if a is not None or b is not None:
            groups.append(f"Recall@{k}")
            u2i.append(np.nan if a is None else a)
            pop.append(np.nan if b is None else b)
    agreement = {label: lookup(m, key) for key, label in (("same_business_cluster", "business cluster"),
                                                          ("same_topic", "content topic"))}
    agreement = {label: d for label, d in agreement.items() if isinstance(d, dict)}
    kinds = [k for k in ("mined", "u2i", "i2i", "content_nn", "random")
             if any(number(d.get(k)) is not None for d in agreement.values())]
    if groups or kinds:
        fig, axes = new_figure(ncols=2 if groups and kinds else 1, width=10.5 if groups and kinds else 5.5, height=3.3)
        if groups:
            grouped_bars(axes[0], groups, {"U2I two-tower": (u2i, None), "popularity": (pop, None)}, annotate=True)
            axes[0].set_title("U2I retrieval on the valid split", fontsize=10)
            axes[0].margins(y=0.2)
        if kinds:
            ax = axes[-1]
            series = {f"same {label}": ([number(d.get(k)) if number(d.get(k)) is not None else np.nan for k in kinds],
                                        None) for label, d in agreement.items()}
            grouped_bars(ax, [k.replace("content_nn", "content NN") for k in kinds], series, annotate=True)
            ax.set_ylim(0, 1.15)
            ax.set_title("pairs whose two items share a ground-truth cluster", fontsize=10)
        out.append(ctx.plot(fig, "U2I recall against popularity and pair quality",
                            "U2I recall of the next positive item over the whole catalogue against a popularity "
                            "baseline"
                            + ("; share of pairs whose items share a ground-truth business cluster (what behaviour "
                               "follows) or content topic (what content follows): mined pairs (all, U2I, Swing I2I) "
                               "against nearest neighbours in the raw content space and random pairs."
                               if kinds else ".")))
    out.append(all_figures(ctx, "pairs"))
    return "".join(out)


def _coverage(ctx: ReportContext, pairs: pd.DataFrame) -> str:
    """Share of items that appear in at least one pair, per frequency bucket and source."""
    items_path = ctx.artifact("items.parquet")
    if items_path is None:
        return ""
    items = read_parquet(items_path, columns=["item_id", "freq_bucket"])
    from qarm.data.split import bucket_labels

    order = [b for b in bucket_labels(list(ctx.cfg.split.freq_bucket_edges)) if b in set(items["freq_bucket"])]
    order += sorted(set(items["freq_bucket"]) - set(order))
    series = {}
    for s in ["all"] + sorted(pairs["source"].unique()):
        sub = pairs if s == "all" else pairs[pairs["source"] == s]
        ids = np.union1d(sub["trigger_id"].to_numpy(), sub["target_id"].to_numpy())
        covered = items["item_id"].isin(ids)
        series[f"{s} pairs"] = ([float(covered[items["freq_bucket"] == b].mean()) for b in order], None)
    fig, (ax,) = new_figure(width=7.5, height=3.0)
    grouped_bars(ax, order, series, legend=False)
    shared_legend(fig, ax)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("train events per item")
    ax.set_ylabel("share of items in a pair")
    overall = float(items["item_id"].isin(np.union1d(pairs["trigger_id"], pairs["target_id"])).mean())
    return ctx.plot(fig, "pair coverage by frequency bucket",
                    f"Item coverage: {overall:.1%} of all items appear in at least one pair; here per frequency "
                    "bucket (train events per item) and pair source. Items outside every pair are aligned only "
                    "through the shared encoder.")


def align_section(ctx: ReportContext) -> str:
    if not ctx.has_run("align") and ctx.artifact("emb_aligned.npy") is None:
        return not_run(ctx, "align", "alignment figures")
    m = ctx.stage_metrics("align")
    modalities = lookup(m, "modalities")
    out = [H.cards([(label, lookup(m, k)) for k, label in (("mode", "fine-tuning mode"), ("fusion", "fusion"),
                                                          ("dim", "aligned dim"), ("raw_dim", "raw dim"),
                                                          ("epochs", "epochs"), ("n_train_pairs", "training pairs"))
                    if lookup(m, k) is not None]
                   + ([("modalities", ", ".join(map(str, modalities)))] if isinstance(modalities, list) else []))]
    groups, raw, aligned = [], [], []
    for kind, label in (("recall", "Recall@{k}"), ("cold_recall", "cold Recall@{k}")):
        for k in _ks(m, rf"(?:raw|aligned)\.{kind}@(\d+)"):
            groups.append(label.format(k=k))
            for store, name in ((raw, "raw"), (aligned, "aligned")):
                v = number(lookup(m, f"{name}.{kind}@{k}"))
                store.append(np.nan if v is None else v)
    biz_groups, biz_raw, biz_al = [], [], []
    for key, label in [("business_nmi", "NMI")] + [(f"business_precision@{k}", f"precision@{k}")
                                                    for k in _ks(m, r"(?:raw|aligned)\.business_precision@(\d+)")]:
        a, b = number(lookup(m, f"raw.{key}")), number(lookup(m, f"aligned.{key}"))
        if a is not None or b is not None:
            biz_groups.append(label)
            biz_raw.append(np.nan if a is None else a)
            biz_al.append(np.nan if b is None else b)
    if groups or biz_groups:
        both = bool(groups and biz_groups)
        fig, axes = new_figure(ncols=2 if both else 1, width=10.5 if both else 6.0, height=3.3)
        if groups:
            grouped_bars(axes[0], groups, {"raw (frozen pretrained)": (raw, None), "aligned": (aligned, None)},
                         annotate=True, legend=not both)
            axes[0].set_title("item-to-item recall on valid-split pairs", fontsize=10)
            axes[0].margins(y=0.2)
        if biz_groups:
            grouped_bars(axes[-1], biz_groups, {"raw (frozen pretrained)": (biz_raw, None), "aligned": (biz_al, None)},
                         annotate=True, legend=not both)
            axes[-1].set_ylim(0, 1.1)
            axes[-1].set_title("agreement with ground-truth business clusters", fontsize=10)
        if both:
            shared_legend(fig, axes[0])
        n_valid, n_cold = lookup(m, "n_valid_pairs"), lookup(m, "n_valid_pairs_cold_target")
        out.append(ctx.plot(fig, "recall raw against aligned",
                            "Finding a pair's target from its trigger among all items, on pairs mined from the valid "
                            "split" + (f" ({n_valid:,} pairs" + (f", {n_cold:,} with a target never seen in training: "
                                                                  "cold Recall" if n_cold else "") + ")"
                                       if isinstance(n_valid, int) else "")
                            + ": raw pre-alignment embedding against the aligned one."
                            + (" Right: NMI of k-means clusters with the ground-truth business clusters, and the "
                               "share of each item's nearest neighbours in its business cluster." if biz_groups else "")))
    losses = lookup(m, "loss_history")
    if isinstance(losses, list) and len(losses) > 1:
        fig, (ax,) = new_figure(width=5.5, height=2.6)
        ax.plot(np.arange(1, len(losses) + 1), losses, marker="o", color=PALETTE[1])
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("InfoNCE loss")
        ax.set_title("alignment training loss", fontsize=10)
        temp = number(lookup(m, "temperature"))
        caption = "Symmetric in-batch InfoNCE loss per epoch" + (f"; final temperature {temp:.3g}." if temp else ".")
        out.append(ctx.plot(fig, "alignment training loss", caption))
    out.append(_projection(ctx))
    out.append(_pair_similarity(ctx))
    out.append(all_figures(ctx, "align"))
    return "".join(out)


def _item_colours(ctx: ReportContext, item_ids: np.ndarray) -> tuple[np.ndarray, str]:
    """Label per item (ground-truth business cluster where known, else first category) and what it is."""
    gt_path = ctx.artifact("data/ground_truth.parquet")
    if gt_path is not None:
        gt = read_parquet(gt_path, columns=["item_id", "business"]).set_index("item_id")["business"]
        labels = gt.reindex(item_ids).to_numpy()
        if not pd.isna(labels).any():
            return np.array([f"business {int(b)}" for b in labels], dtype=object), "ground-truth business cluster"
    items = read_parquet(ctx.run / "items.parquet", columns=["item_id", "category"]).set_index("item_id")
    cat = items["category"].reindex(item_ids).fillna("").astype(str)
    first = cat.str.split(",").str[0].str.split("|").str[0].str.strip().replace("", "(none)")
    return first.to_numpy(dtype=object), "category (first genre)"


def _projection(ctx: ReportContext) -> str:
    raw_p, al_p, items_p = ctx.artifact("emb_raw.npy"), ctx.artifact("emb_aligned.npy"), ctx.artifact("items.parquet")
    if raw_p is None or al_p is None or items_p is None:
        return H.note("The 2-D projection needs emb_raw.npy, emb_aligned.npy and items.parquet; some are missing.")
    item_ids = read_parquet(items_p, columns=["item_id"])["item_id"].to_numpy()
    raw, aligned = read_npy(raw_p, mmap=True), read_npy(al_p, mmap=True)
    if raw.shape[0] != len(item_ids) or aligned.shape[0] != len(item_ids):
        return H.error_box(f"emb_raw.npy has {raw.shape[0]} rows and emb_aligned.npy {aligned.shape[0]}, but "
                           f"items.parquet has {len(item_ids)} items: the embeddings are stale; rerun align.")
    rows = subsample(len(item_ids), ctx.cfg.report.projection_max_items, ctx.cfg.seed)
    labels, what = _item_colours(ctx, item_ids[rows])
    cls, names = colour_labels(labels)
    method = ctx.cfg.report.projection
    fig, axes = new_figure(ncols=2, width=10.5, height=4.6)
    for ax, emb, title in ((axes[0], raw, "raw (before alignment)"), (axes[1], aligned, "aligned (after)")):
        xy = project_2d(np.asarray(emb[rows]), method, ctx.cfg.seed)
        for c, name in enumerate(names):
            sel = cls == c
            colour = "#c7c7c7" if name == "other" else PALETTE[c % len(PALETTE)]
            ax.scatter(xy[sel, 0], xy[sel, 1], s=7, color=colour, alpha=0.75, linewidths=0, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    axes[1].legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2)
    label = "PCA" if method == "pca" else "t-SNE"
    return ctx.plot(fig, f"{label} projection of raw and aligned embeddings",
                    f"{label} of {len(rows):,} items (of {len(item_ids):,}, drawn with the run seed), raw embedding "
                    f"left, aligned right, coloured by {what}. Alignment should pull items of the same "
                    f"{'cluster' if what.startswith('ground') else 'behaviour'} together.")


def _pair_similarity(ctx: ReportContext, max_pairs: int = 20000) -> str:
    """Cosine of mined pairs against random item pairs, under the raw and the aligned embedding."""
    raw_p, al_p, pairs_p = ctx.artifact("emb_raw.npy"), ctx.artifact("emb_aligned.npy"), ctx.artifact("pairs.parquet")
    items_p = ctx.artifact("items.parquet")
    if raw_p is None or al_p is None or pairs_p is None or items_p is None:
        return ""
    item_ids = read_parquet(items_p, columns=["item_id"])["item_id"].to_numpy()
    pairs = read_parquet(pairs_p, columns=["trigger_id", "target_id"])
    if len(pairs) == 0 or any(read_npy(p, mmap=True).shape[0] != len(item_ids) for p in (raw_p, al_p)):
        return ""  # stale embeddings are reported by the projection above
    rng = np.random.default_rng([ctx.cfg.seed, 0x51])
    take = rng.choice(len(pairs), size=min(max_pairs, len(pairs)), replace=False)
    rows = pd.Index(item_ids)
    a = rows.get_indexer(pairs["trigger_id"].to_numpy()[take])
    b = rows.get_indexer(pairs["target_id"].to_numpy()[take])
    ok = (a >= 0) & (b >= 0)  # pairs naming items missing from items.parquet are left out
    a, b = a[ok], b[ok]
    ra, rb = rng.integers(0, len(item_ids), size=len(a)), rng.integers(0, len(item_ids), size=len(a))
    fig, axes = new_figure(ncols=2, width=9.5, height=3.0)
    gaps = []
    for ax, path, title in ((axes[0], raw_p, "raw"), (axes[1], al_p, "aligned")):
        emb = read_npy(path, mmap=True)  # only the sampled rows are read
        pos = np.einsum("ij,ij->i", emb[a], emb[b])
        neg = np.einsum("ij,ij->i", emb[ra], emb[rb])
        bins = np.linspace(min(pos.min(), neg.min()), max(pos.max(), neg.max()), 50)
        ax.hist(neg, bins=bins, color=PALETTE[7], alpha=0.6, density=True, label="random pairs")
        ax.hist(pos, bins=bins, color=PALETTE[1], alpha=0.6, density=True, label="mined pairs")
        ax.set_title(f"{title}: cosine similarity", fontsize=10)
        ax.legend(fontsize=8, frameon=False)
        gaps.append(float(pos.mean() - neg.mean()))
    return ctx.plot(fig, "cosine similarity of mined and random pairs",
                    f"Cosine similarity of {len(a):,} mined (training) pairs against as many random item pairs. "
                    f"Mean gap mined minus random: raw {gaps[0]:.3f}, aligned {gaps[1]:.3f}. These are the pairs "
                    "alignment trained on, so this shows what it learned, not how it generalises (see recall above).")
