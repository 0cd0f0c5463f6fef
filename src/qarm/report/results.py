"""Markdown tables of a run (``metrics.json``) or a pipeline-seed study (``study.json``).

``qarm results DIR`` prints them; the README's results tables are pasted from this output and
kept in sync by :func:`update_readme` / :func:`check_readme` (``qarm results --readme README.md``).
The output is a pure function of the JSON: rows and columns in a fixed order, fixed decimals,
no timestamps, so the same file always renders to the same bytes.

A cell is ``mean ± std``: for a run, the spread over the ranker's seeds (``rank.seeds``); for a
study, over the pipeline seeds, each value being that seed's mean over its ranker seeds.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from qarm.errors import QarmError

VARIANT_ORDER = ("id", "frozen_mm", "ia_rep", "vq", "rq", "qarm", "qarm_dense", "qarm_raw")
METHOD_ORDER = ("aligned_codes", "raw_codes", "sasrec", "popularity")
# quality columns only: timings and epoch counts stay in metrics.json, out of the README tables
RETRIEVE_METRICS = ("recall@5", "recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20", "ndcg@50",
                    "warm_recall@10", "cold_recall@10", "cold_ndcg@10", "cold_recall@50")
NA = "n/a"

# (key under rank.variants.<v>.<task>, column label); dotted keys are nested objects
MAIN_METRICS = (("auc", "AUC"), ("gauc", "GAUC"), ("cold_auc", "**cold AUC**"),
                ("warm_users.auc", "warm-user AUC"), ("warm_users.gauc", "warm-user GAUC"),
                ("new_users.auc", "new-user AUC"), ("new_users.gauc", "new-user GAUC"))
OTHER_TASK_METRICS = (("auc", "AUC"), ("cold_auc", "cold AUC"))
TASK_METRICS = (("auc", "AUC"), ("gauc", "GAUC"), ("logloss", "LogLoss"),
                ("cold_auc", "cold AUC"), ("cold_gauc", "cold GAUC"), ("cold_logloss", "cold LogLoss"),
                ("warm_users.auc", "warm-user AUC"), ("warm_users.gauc", "warm-user GAUC"),
                ("new_users.auc", "new-user AUC"), ("new_users.gauc", "new-user GAUC"),
                ("cold_warm_users.auc", "cold warm-user AUC"), ("cold_new_users.auc", "cold new-user AUC"))

# (section, key, label, format): the headline figures of the upstream stages
STAGE_FIGURES: tuple[tuple[str, str, str, str], ...] = (
    ("pairs", "n_u2i", "U2I pairs", "int"),
    ("pairs", "n_i2i", "Swing I2I pairs", "int"),
    ("pairs", "item_coverage", "item coverage", "share"),
    ("pairs", "item_coverage_of_positive_items", "item coverage (items with a train positive)", "share"),
    ("pairs", "u2i_recall@10", "U2I Recall@10 (valid)", "share"),
    ("pairs", "u2i_recall@50", "U2I Recall@50 (valid)", "share"),
    ("pairs", "u2i_recall@100", "U2I Recall@100 (valid)", "share"),
    ("pairs", "popularity_recall@10", "popularity Recall@10 (valid)", "share"),
    ("pairs", "popularity_recall@50", "popularity Recall@50 (valid)", "share"),
    ("pairs", "popularity_recall@100", "popularity Recall@100 (valid)", "share"),
    ("pairs", "u2i_test_recall@10", "U2I Recall@10 (test)", "share"),
    ("pairs", "u2i_test_recall@50", "U2I Recall@50 (test)", "share"),
    ("pairs", "u2i_test_recall@100", "U2I Recall@100 (test)", "share"),
    ("pairs", "popularity_test_recall@10", "popularity Recall@10 (test)", "share"),
    ("pairs", "popularity_test_recall@50", "popularity Recall@50 (test)", "share"),
    ("pairs", "popularity_test_recall@100", "popularity Recall@100 (test)", "share"),
    ("pairs", "same_business_cluster.mined", "mined pairs sharing a business cluster", "share"),
    ("pairs", "same_business_cluster.random", "random pairs sharing a business cluster", "share"),
    ("align", "raw.recall@10", "raw Recall@10 (valid pairs)", "share"),
    ("align", "aligned.recall@10", "aligned Recall@10 (valid pairs)", "share"),
    ("align", "raw.recall@50", "raw Recall@50 (valid pairs)", "share"),
    ("align", "aligned.recall@50", "aligned Recall@50 (valid pairs)", "share"),
    ("align", "raw.cold_recall@50", "raw cold-target Recall@50", "share"),
    ("align", "aligned.cold_recall@50", "aligned cold-target Recall@50", "share"),
    ("align", "raw.business_nmi", "raw business-cluster NMI", "share"),
    ("align", "aligned.business_nmi", "aligned business-cluster NMI", "share"),
    ("quantize", "rq.collision_rate", "RQ collision rate", "share"),
    ("quantize", "rq.unique_sid_ratio", "RQ unique-SID ratio", "share"),
    ("quantize", "rq.max_items_per_code", "RQ max items per code", "int"),
    ("quantize", "rq.perplexity", "RQ perplexity per level", "float1"),
    ("quantize", "rq.rel_recon_error", "RQ relative reconstruction error per level", "float3"),
    ("quantize", "rq.holdout_collision_rate", "RQ collision rate, held-out items", "share"),
    ("quantize", "vq.distinct_codes_used", "VQ pool codes used", "int"),
    ("quantize", "vq.pool_size", "VQ pool size", "int"),
    ("quantize", "vq.neighbor_overlap", "VQ neighbour overlap", "share"),
)


# ----------------------------------------------------------------------------------------------
# access: one view over a run's metrics.json and a study's study.json


def is_study(data: Mapping[str, Any]) -> bool:
    return data.get("kind") == "study"


def lookup(tree: Any, key: str) -> Any:
    """``tree[key]`` for a flat dotted key (``rq.perplexity``) or the nested path it names."""
    if not isinstance(tree, Mapping):
        return None
    if key in tree:
        return tree[key]
    head, dot, rest = key.partition(".")
    if dot and isinstance(tree.get(head), Mapping):
        return lookup(tree[head], rest)
    return None


def _section(data: Mapping[str, Any], name: str) -> Any:
    return data.get(name) if is_study(data) else data.get("rank", {}).get(name)


def variants_of(data: Mapping[str, Any]) -> dict[str, Any]:
    return _section(data, "variants") or {}


def buckets_of(data: Mapping[str, Any]) -> dict[str, Any]:
    return _section(data, "buckets") or {}


def rank_info(data: Mapping[str, Any], key: str) -> Any:
    return lookup(data.get("rank") or {}, key)


def ordered(names, preferred) -> list[str]:
    names, preferred = list(names), list(dict.fromkeys(preferred))
    return [p for p in preferred if p in names] + sorted(n for n in names if n not in preferred)


def tasks_of(data: Mapping[str, Any]) -> list[str]:
    found = {t for v in variants_of(data).values() if isinstance(v, Mapping)
             for t, m in v.items() if t != "best_epoch" and isinstance(m, Mapping) and "auc" in m}
    configured = list(((data.get("config") or {}).get("rank") or {}).get("tasks") or [])
    return ordered(found, configured + ["click", "like"])


# ----------------------------------------------------------------------------------------------
# formatting


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _fmt(v: float | None, kind: str) -> str:
    if v is None:
        return NA
    if kind == "int":
        return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"
    decimals = {"float1": 1, "float3": 3, "bucket": 3}.get(kind, 4)
    return f"{v:.{decimals}f}"


def cell(value: Any, kind: str = "metric", spread: bool = True) -> str:
    """A number, ``{mean, std[, values]}`` or a list of either as fixed-decimal text."""
    if isinstance(value, Mapping) and "mean" in value:
        mean, std = value.get("mean"), value.get("std")
        if isinstance(mean, list):
            stds = std if isinstance(std, list) else [None] * len(mean)
            return " / ".join(cell({"mean": m, "std": s}, kind, spread) for m, s in zip(mean, stds))
        m, s = _num(mean), _num(std)
        if m is None:
            return NA
        if not spread or s is None:
            return _fmt(m, kind)
        return f"{_fmt(m, kind)} ± {_fmt(s, kind)}"
    if isinstance(value, list):
        return " / ".join(cell(v, kind, spread) for v in value)
    return _fmt(_num(value), kind)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _ranker_seeds(data: Mapping[str, Any]) -> list[Any] | None:
    return ((data.get("config") or {}).get("rank") or {}).get("seeds")


def has_spread(data: Mapping[str, Any]) -> bool:
    """False when the ± would be over a single seed (always 0): the cells then show the mean only."""
    if is_study(data):
        return len(data.get("seeds") or []) != 1
    return len(_ranker_seeds(data) or [None, None]) != 1


def _seeds_note(data: Mapping[str, Any]) -> str:
    ranker = _ranker_seeds(data)
    ranker_txt = ", ".join(map(str, ranker)) if ranker else "the configured ranker seeds"
    if is_study(data):
        seeds = ", ".join(map(str, data.get("seeds", [])))
        if not has_spread(data):
            return f"pipeline seed {seeds} (one seed: no spread); mean over ranker seeds {ranker_txt}"
        return (f"mean ± std over pipeline seeds {seeds} (sample std); each seed's value is its mean over "
                f"ranker seeds {ranker_txt}")
    if not has_spread(data):
        return f"ranker seed {ranker_txt} (one seed: no spread)"
    return f"mean ± std over ranker seeds {ranker_txt} (sample std)"


# ----------------------------------------------------------------------------------------------
# tables


def _has(variants: Mapping[str, Any], task: str, key: str) -> bool:
    return any(lookup(v.get(task), key) is not None for v in variants.values() if isinstance(v, Mapping))


def rank_table(data: Mapping[str, Any], task: str | None = None) -> str:
    """Variants x (first task: AUC, GAUC, cold AUC, warm-/new-user AUC and GAUC; other tasks: AUC, cold AUC).

    With ``task``: every metric of that one task."""
    variants = variants_of(data)
    if not variants:
        raise QarmError("no ranking figures (rank.variants): run the 'train' stage")
    tasks = tasks_of(data)
    if task is not None and task not in tasks:
        raise QarmError(f"task {task!r} not among the ranking figures ({', '.join(tasks)})")
    cols: list[tuple[str, str, str]] = []
    plan = [(task, TASK_METRICS)] if task else [(t, MAIN_METRICS if i == 0 else OTHER_TASK_METRICS)
                                               for i, t in enumerate(tasks)]
    for t, metrics in plan:
        cols += [(t, k, f"{t} {label}") for k, label in metrics if _has(variants, t, k)]
    rows = []
    for v in ordered(variants, VARIANT_ORDER):
        rows.append([f"`{v}`"] + [cell(lookup(variants[v].get(t), k), spread=has_spread(data)) for t, k, _ in cols])
    return table(["variant"] + [c[2] for c in cols], rows)


def _bucket_key(label: str) -> tuple[float, str]:
    found = re.match(r"\s*(\d+)", str(label))
    return (float(found.group(1)) if found else math.inf, str(label))


def buckets_table(data: Mapping[str, Any], task: str | None = None, against: str | None = None) -> str:
    """Variants x item-frequency buckets: test AUC of ``task`` (default: the first task), means only.
    With ``against`` (a study only): each other variant's AUC minus that variant's, per bucket,
    paired by pipeline seed as in ``diff_table`` (the long-tail view: the rare buckets' rows)."""
    buckets = buckets_of(data)
    if not buckets:
        raise QarmError("no per-bucket figures (rank.buckets): run the 'train' stage")
    if task is None:
        found = ordered({t for v in buckets.values() for t in v}, tasks_of(data))
        if not found:
            raise QarmError("no per-bucket figures (rank.buckets): run the 'train' stage")
        task = found[0]
    labels = sorted({b for v in buckets.values() for b in (v.get(task) or {})}, key=_bucket_key)
    if against is not None:
        if not is_study(data):
            raise QarmError("the buckets table against a variant needs a study (qarm study): per-pipeline-seed values")
        if against not in buckets:
            raise QarmError(f"buckets table: reference variant {against!r} is not among "
                            f"{', '.join(ordered(buckets, VARIANT_ORDER))}")
        ref = buckets[against].get(task) or {}
        rows = [[f"`{v}`"] + [diff_cell(_paired(((buckets[v].get(task) or {}).get(b) or {}).get("values"),
                                                (ref.get(b) or {}).get("values"))) for b in labels]
                for v in ordered(buckets, VARIANT_ORDER) if v != against]
        return table(["variant"] + [f"{task} AUC {b} − `{against}`" for b in labels], rows)
    rows = [[f"`{v}`"] + [cell((buckets[v].get(task) or {}).get(b), "bucket", spread=False) for b in labels]
            for v in ordered(buckets, VARIANT_ORDER)]
    return table(["variant"] + labels, rows)


def stages_table(data: Mapping[str, Any]) -> str:
    """Headline figures of pairs, align and quantize (those present)."""
    rows = []
    for section, key, label, kind in STAGE_FIGURES:
        v = lookup(data.get(section) or {}, key)
        if v is not None:
            rows.append([section, label, cell(v, kind, spread=has_spread(data))])
    if not rows:
        raise QarmError("no pairs/align/quantize figures: run those stages")
    return table(["stage", "figure", "value"], rows)


def retrieve_table(data: Mapping[str, Any]) -> str:
    """Retrieval methods x Recall/NDCG (those present)."""
    ret = {k: v for k, v in (data.get("retrieve") or {}).items() if isinstance(v, Mapping) and not _is_spread(v)}
    if not ret:
        raise QarmError("no retrieval figures (retrieve): run the 'retrieve' stage")
    found = {k for v in ret.values() for k, x in v.items() if _num(x) is not None or _is_spread(x)}
    metrics = [k for k in RETRIEVE_METRICS if k in found]
    rows = [[f"`{m}`"] + [cell(ret[m].get(k), spread=has_spread(data)) for k in metrics]
            for m in ordered(ret, METHOD_ORDER)]
    return table(["method"] + metrics, rows)


DIFF_METRICS = (("auc", "AUC"), ("gauc", "GAUC"), ("cold_auc", "cold AUC"))
DIFF_REFERENCES = ("ia_rep", "frozen_mm", "id")


def _paired(values: Any, ref: Any) -> list[float]:
    """Per-seed differences of two ``values`` lists (a study's per-pipeline-seed figures), seeds
    where either is undefined left out."""
    if not isinstance(values, list) or not isinstance(ref, list) or len(values) != len(ref):
        return []
    return [a - b for a, b in ((_num(x), _num(y)) for x, y in zip(values, ref)) if a is not None and b is not None]


def diff_cell(diffs: list[float]) -> str:
    """``+0.0052 ± 0.0031 (3/3)``: mean and sample std of per-seed differences, and in how many
    seeds the difference is positive."""
    if not diffs:
        return NA
    n = len(diffs)
    mean = sum(diffs) / n
    text = f"{mean:+.4f}"
    if n > 1:
        std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
        text += f" ± {std:.4f}"
    return f"{text} ({sum(d > 0 for d in diffs)}/{n})"


def diff_table(data: Mapping[str, Any], task: str | None = None, against: str | None = None) -> str:
    """Variants x (AUC, GAUC, cold AUC of ``task``) minus the ``against`` variant's, paired by
    pipeline seed: each seed's difference, then mean ± sample std over seeds and how many seeds are
    above. A study (its per-seed ``values``), or a grid: one row per point and variant, against the
    reference of the same point. Every variant of a seed shares that seed's hold-out and test
    events, so the paired spread leaves out what the seeds' event draws add to the spread of each
    variant's own figure."""
    if is_grid(data) and data.get("points"):
        keys = [g["key"] for g in data.get("grid") or []]
        header, rows = None, []
        for point in data["points"]:
            h, r = _diff_rows(point["study"], task, against)
            header = header or [f"`{k}`" for k in keys] + h
            rows += [[str(point["overrides"].get(k, "")) for k in keys] + row for row in r]
        return table(header, rows)
    if not is_study(data):
        raise QarmError("the diff table needs a study or a grid (qarm study): per-pipeline-seed values")
    return table(*_diff_rows(data, task, against))


def _diff_rows(data: Mapping[str, Any], task: str | None, against: str | None) -> tuple[list[str], list[list[str]]]:
    variants = variants_of(data)
    if not variants:
        raise QarmError("no ranking figures (rank.variants): run the 'train' stage")
    against = against or next((v for v in DIFF_REFERENCES if v in variants), ordered(variants, VARIANT_ORDER)[0])
    if against not in variants:
        raise QarmError(f"diff table: reference variant {against!r} is not among {', '.join(ordered(variants, VARIANT_ORDER))}")
    task = task or (tasks_of(data) or [None])[0]
    if task not in tasks_of(data):
        raise QarmError(f"task {task!r} not among the ranking figures ({', '.join(tasks_of(data))})")
    ref = variants[against].get(task) or {}
    rows = []
    for v in ordered(variants, VARIANT_ORDER):
        if v == against:
            continue
        mine = variants[v].get(task) or {}
        rows.append([f"`{v}`"] + [diff_cell(_paired((lookup(mine, k) or {}).get("values"), (lookup(ref, k) or {}).get("values")))
                                  for k, _ in DIFF_METRICS])
    return ["variant"] + [f"{task} {label} − `{against}`" for _, label in DIFF_METRICS], rows


# (section, key, label, format): the upstream figures a grid table shows beside the ranking
GRID_FIGURES: tuple[tuple[str, str, str, str], ...] = (
    ("align", "aligned.recall@10", "pair R@10", "share"),
    ("align", "aligned.cold_recall@50", "cold pair R@50", "share"),
    ("quantize", "rq.collision_rate", "RQ collisions", "share"),
)


def is_grid(data: Mapping[str, Any]) -> bool:
    return data.get("kind") == "grid"


def grid_table(data: Mapping[str, Any], task: str | None = None, variants: str | None = None,
               stage: str | None = None) -> str:
    """Grid points x (the varied values, pair recall, cold pair recall, RQ collisions, and per
    variant GAUC and cold AUC of ``task``, default the first): one study per row.

    ``variants``: comma-separated subset of the variants (default: all, in the usual order).
    ``stage``: instead of those three upstream figures, every headline figure of that stage
    (``pairs``, ``align`` or ``quantize``: the rows of the ``stages`` table)."""
    if not is_grid(data) or not data.get("points"):
        raise QarmError("not a grid (qarm study --grid): no grid points")
    points = data["points"]
    studies = [p["study"] for p in points]
    first = studies[0]
    names = ordered(variants_of(first), VARIANT_ORDER)
    if variants:
        wanted = [v.strip() for v in variants.split(",") if v.strip()]
        missing = [v for v in wanted if v not in names]
        if missing:
            raise QarmError(f"grid table: variant {missing[0]!r} is not among {', '.join(names)}")
        names = wanted
    task = task or (tasks_of(first) or [None])[0]
    keys = [g["key"] for g in data.get("grid") or []]
    if stage is not None and stage not in {sec for sec, *_ in STAGE_FIGURES}:
        raise QarmError(f"grid table: stage={stage!r} is not one of {', '.join(dict.fromkeys(s for s, *_ in STAGE_FIGURES))}")
    chosen = [f for f in STAGE_FIGURES if f[0] == stage] if stage else GRID_FIGURES
    figures = [(sec, k, label, kind) for sec, k, label, kind in chosen
               if any(lookup(st.get(sec) or {}, k) is not None for st in studies)]
    header = [f"`{k}`" for k in keys] + [f[2] for f in figures]
    header += [f"`{v}` {label}" for v in names for label in ("GAUC", "cold AUC")]
    rows = []
    for point, st in zip(points, studies):
        spread = has_spread(st)
        row = [str(point["overrides"].get(k, "")) for k in keys]
        row += [cell(lookup(st.get(sec) or {}, k), kind, spread=spread) for sec, k, _, kind in figures]
        for v in names:
            per_task = (variants_of(st).get(v) or {}).get(task) if task else None
            row += [cell(lookup(per_task, m), spread=spread) for m in ("gauc", "cold_auc")]
        rows.append(row)
    return table(header, rows)


def _is_spread(v: Any) -> bool:
    return isinstance(v, Mapping) and "mean" in v


def _caption(data: Mapping[str, Any]) -> str:
    parts = []
    for key, label in (("n_test", "test events"), ("n_test_warm_user_events", "warm users"),
                       ("n_test_new_user_events", "new users"), ("n_cold_test", "cold_test events")):
        v = rank_info(data, key)
        if v is not None:
            parts.append(f"{label} {cell(v, 'int', spread=False)}")
    return "; ".join(parts)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def ablation_rows_table(rows: list[dict[str, Any]], variant: str) -> str:
    """The rows of ``qarm.rank.ablate.feature_ablation`` as a Markdown table, AUC changes against the first row."""
    base, task = rows[0], rows[0]["task"]
    out = [f"| `{variant}`: hidden at evaluation | {task} test AUC | Δ | test mean logit | "
           f"{task} cold AUC | Δ | cold mean logit |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        dt, dc = r["test_auc"] - base["test_auc"], r["cold_test_auc"] - base["cold_test_auc"]
        delta = ("", "") if r is base else (f"{dt:+.4f}", f"{dc:+.4f}")
        out.append(f"| {r['hidden']} | {r['test_auc']:.4f} | {delta[0]} | {r['test_mean_logit']:+.2f} | "
                   f"{r['cold_test_auc']:.4f} | {delta[1]} | {r['cold_test_mean_logit']:+.2f} |")
    return "\n".join(out)


def ablation_runs_table(per_run: dict[str, list[dict[str, Any]]], variant: str) -> str:
    """Several runs' rows (``qarm.rank.ablate.study_ablation``) as one Markdown table: per hidden group, the AUC
    change against hiding nothing, paired within each run, then ``mean ± std (k/n)`` over runs
    (k: runs where hiding the group *raised* AUC), and the mean cold logit."""
    runs = list(per_run.values())
    if len(runs) == 1:
        return ablation_rows_table(runs[0], variant)
    task = runs[0][0]["task"]
    out = [f"| `{variant}`: hidden at evaluation ({len(runs)} runs) | {task} test AUC Δ | {task} cold AUC Δ | "
           f"cold mean logit |", "|---|---|---|---|"]
    for i, row in enumerate(runs[0]):
        same = [r[i] for r in runs if i < len(r) and r[i]["hidden"] == row["hidden"]]
        if len(same) != len(runs):
            raise QarmError(f"runs differ in their feature groups at {row['hidden']!r}: the same variant in every run?")
        logit = _mean([r["cold_test_mean_logit"] for r in same])
        if i == 0:
            auc_test = _mean([r["test_auc"] for r in same])
            auc_cold = _mean([r["cold_test_auc"] for r in same])
            out.append(f"| nothing (mean AUC) | {auc_test:.4f} | {auc_cold:.4f} | {logit:+.2f} |")
            continue
        dt = [r["test_auc"] - b[0]["test_auc"] for r, b in zip(same, runs)]
        dc = [r["cold_test_auc"] - b[0]["cold_test_auc"] for r, b in zip(same, runs)]
        out.append(f"| {row['hidden']} | {diff_cell(dt)} | {diff_cell(dc)} | {logit:+.2f} |")
    return "\n".join(out)


def ablation_table(data: Mapping[str, Any]) -> str:
    """A ``qarm ablate --json`` file (``kind: ablation``) as its Markdown table."""
    if data.get("kind") != "ablation" or not isinstance(data.get("runs"), dict) or not data["runs"]:
        raise QarmError("not a 'qarm ablate --json' file (kind: ablation, with runs)")
    return ablation_runs_table(data["runs"], str(data.get("variant", "")))


TABLES: dict[str, tuple[str, Callable[..., str]]] = {
    "rank": ("Ranking", rank_table),
    "buckets": ("Test AUC per item-frequency bucket (train count), mean", buckets_table),
    "stages": ("Pairs, alignment and quantisation", stages_table),
    "retrieve": ("Retrieval", retrieve_table),
    "grid": ("Grid", grid_table),
    "diff": ("Paired differences against a reference variant, per pipeline seed", diff_table),
    "ablate": ("Item features hidden at evaluation (qarm ablate)", ablation_table),
}
TABLE_OPTIONS = {"rank": {"task"}, "buckets": {"task", "against"}, "grid": {"task", "variants", "stage"},
                 "diff": {"task", "against"}}


def render_table(data: Mapping[str, Any], name: str, **options: str) -> str:
    """One table by name (``rank``, ``buckets``, ``stages``, ``retrieve``); ``task=`` for rank/buckets."""
    if name not in TABLES:
        raise QarmError(f"unknown results table {name!r}; tables: {', '.join(TABLES)}")
    unknown = set(options) - TABLE_OPTIONS.get(name, set())
    if unknown:
        raise QarmError(f"table {name!r} takes no option {sorted(unknown)[0]!r}")
    return TABLES[name][1](data, **options)


def available_tables(data: Mapping[str, Any]) -> list[str]:
    out = []
    for name in TABLES:
        try:
            render_table(data, name)
        except QarmError:
            continue
        out.append(name)
    return out


def render_all(data: Mapping[str, Any]) -> str:
    """Every table the JSON has, each under a heading, with what its ± means."""
    if is_grid(data):
        return render_grid(data)
    what = "Study" if is_study(data) else "Run"
    name = data.get("config_name") or (data.get("config") or {}).get("name") or ""
    lines = [f"## {what}{': ' + name if name else ''}", ""]
    if is_study(data):
        lines += [f"- pipeline seeds: {', '.join(map(str, data.get('seeds', [])))}"] + _provenance(data) + [""]
    for key in available_tables(data):
        title, _ = TABLES[key]
        lines += [f"### {title}", ""]
        if key in ("rank", "buckets"):
            note = _seeds_note(data) if key == "rank" else "means; " + _seeds_note(data)
            caption = _caption(data) if key == "rank" else ""
            lines += [f"{note}{'; ' + caption if caption else ''}.", ""]
        lines += [render_table(data, key), ""]
    return "\n".join(lines)


def _provenance(data: Mapping[str, Any]) -> list[str]:
    """The git commit, package version and command lines of a study's or grid's header."""
    lines = [f"- git commit: {data.get('git_commit') or 'unknown'}" + (" (uncommitted changes)" if data.get("git_dirty") else ""),
             f"- qarm {data.get('qarm_version', '?')}"]
    return lines + ([f"- command: `{data['command']}`"] if data.get("command") else [])


def render_grid(data: Mapping[str, Any]) -> str:
    """A grid's table (every task), with what was varied, what was shared and the command."""
    first = data["points"][0]["study"]
    lines = ["## Grid: " + (first.get("config_name") or ""), "",
             "- varied: " + "; ".join(f"`{g['key']}` in {', '.join(map(str, g['values']))}" for g in data.get("grid") or []),
             f"- pipeline seeds: {', '.join(map(str, data.get('seeds', [])))}; " + _seeds_note(first),
             f"- run once per seed and shared by every point: {', '.join(data.get('shared_stages') or []) or 'nothing'}",
             *_provenance(data), ""]
    for task in tasks_of(first) or [None]:
        lines += [f"### {task or 'figures'}", "", grid_table(data, task=task), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# README blocks: <!-- results: PATH table=NAME [task=T] --> ... <!-- /results -->

BLOCK = re.compile(r"(<!-- results: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def parse_spec(spec: str, where: str = "README") -> tuple[str, str, dict[str, str]]:
    """``"docs/results/x.json table=rank task=like"`` -> (path, table, options)."""
    path, *opts = spec.split()
    options = {}
    for o in opts:
        k, sep, v = o.partition("=")
        if not sep:
            raise QarmError(f"{where}: results marker option {o!r}: expected key=value")
        options[k] = v
    if "table" not in options:
        raise QarmError(f"{where}: results marker for {path} names no table= (tables: {', '.join(TABLES)})")
    return path, options.pop("table"), options


def render_blocks(text: str, root: Path, load: Callable[[Path], Mapping[str, Any]] | None = None,
                  where: str = "README") -> tuple[str, list[str]]:
    """``text`` with every marked results block re-rendered from its JSON (paths relative to ``root``).

    Returns (new text, names of blocks whose body changed)."""
    from qarm.study import load_results

    load = load or load_results
    changed: list[str] = []

    def one(m: re.Match) -> str:
        path, name, options = parse_spec(m.group("spec"), where)
        p = root / path
        if not p.is_file():
            raise QarmError(f"{where}: results block for table={name} names {path}, which does not exist")
        body = render_table(load(p), name, **options) + "\n"
        if body != m.group("body"):
            changed.append(f"{path} table={name}" + "".join(f" {k}={v}" for k, v in options.items()))
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(one, text), changed


def update_readme(readme: str | Path, check: bool = False) -> list[str]:
    """Re-render the marked blocks of ``readme`` in place (or, with ``check``, only report drift).

    Returns the blocks that differed from their JSON."""
    from qarm.io import write_bytes

    path = Path(readme)
    if not path.is_file():
        raise QarmError(f"{path}: no such file")
    text = path.read_text()
    new, changed = render_blocks(text, path.resolve().parent, where=str(path))
    if changed and not check:
        write_bytes(path, new.encode())
    return changed
