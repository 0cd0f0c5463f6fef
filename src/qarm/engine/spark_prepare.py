"""The ``prepare`` stage on Spark: validate, label, split and bucket the events as DataFrames.

The event table never reaches the driver. What does: the item catalogue (items are built and
checked by the local code, :func:`qarm.data.items.build_items`, since media checks need the
files), per-item aggregates (first-seen time, train count: one row per item), per-reason skip
counts and a few histogram buckets for the exact split cutoffs.

Equivalence with the local engine (``qarm.data.stage.prepare``):

- validation runs the local column parsers (:func:`~qarm.data.schema.parse_int_ids`,
  ``parse_timestamps``, ``parse_labels``, ``is_member``) on each Arrow batch (``mapInPandas``),
  checks in the same order, and counts each bad row once under its first reason; strict-mode
  errors carry the same message, file, 1-based row and column;
- cutoffs are the exact order statistics the local split takes (found by histogram refinement,
  not ``approxQuantile``), the item hold-out is the same seeded draw on the same catalogue;
- ``events.parquet`` is a folder of part files globally sorted by (timestamp, user_id, item_id,
  input position), exactly the local order, so any reader sees the same rows in the same order.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from qarm.config import Config
from qarm.data.config import DataConfig
from qarm.data.files import read_table, resolve_file
from qarm.data.items import build_items
from qarm.data.schema import (REQUIRED_EVENT_COLUMNS, SPLITS, is_member, parse_int_ids, parse_labels,
                              parse_timestamps, require_columns)
from qarm.data.split import check_split_config, draw_holdout, freq_buckets
from qarm.engine.session import StepLog, is_uri, n_buckets, spark_session, write_dataset
from qarm.errors import ConfigError, DataError
from qarm.io import write_json, write_parquet
from qarm.lookup import IdIndex

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from qarm.runner import RunDir

MID, REASON, FILE = "_mid", "_reason", "_file"   # input position, first failed check (0: none), input file
HIST_BUCKETS = 1 << 16                          # histogram width of one cutoff-refinement pass


def event_checks(label_columns: list[str], has_rating: bool) -> list[tuple[str, str, str]]:
    """(skip reason, message, column) of each row check, in the order ``validate_events`` runs them.

    Check ``k`` (1-based) is reason code ``k`` in the ``_reason`` column.
    """
    checks = [("bad_user_id", "user_id must be an integer id", "user_id"),
              ("bad_item_id", "item_id must be an integer id", "item_id"),
              ("unparsable_timestamp", "timestamp must be unix seconds or an ISO-8601 date-time", "timestamp")]
    checks += [("bad_label", f"label {c!r} must be 0 or 1", c) for c in label_columns]
    if has_rating:
        checks.append(("bad_rating", "rating must be a number", "rating"))
    checks.append(("unknown_item", "item_id not in the items table", "item_id"))
    return checks


def check_batch(pdf: pd.DataFrame, catalog: np.ndarray, label_columns: list[str], extras: list[str],
                labels_from: tuple[float, float] | None = None) -> pd.DataFrame:
    """Parse and check one batch of raw events; every row comes back with its first failed check.

    pdf: raw columns plus ``_mid``; catalog: int64 [n_items] item ids. ``labels_from``: MovieLens
    (click, like) rating thresholds, labels derived as ``movielens_labels`` does. Returns typed
    user_id/item_id/timestamp (int64), labels (int8), rating (float32), the extras unchanged,
    ``_mid`` and ``_reason`` (int8: 0 = valid, else the 1-based index into :func:`event_checks`).
    Values of invalid rows are placeholders.
    """
    if labels_from is not None:
        from qarm.data.movielens import movielens_labels

        pdf = movielens_labels(pdf, label_columns, labels_from[0], labels_from[1], "")
    reason = np.zeros(len(pdf), dtype=np.int8)
    code = 0

    def mark(bad: np.ndarray) -> None:
        nonlocal code
        code += 1
        reason[(reason == 0) & bad] = code

    out: dict[str, Any] = {}
    for col in ("user_id", "item_id"):
        out[col], bad = parse_int_ids(pdf[col])
        mark(bad)
    out["timestamp"], bad = parse_timestamps(pdf["timestamp"])
    mark(bad)
    for col in label_columns:
        out[col], bad = parse_labels(pdf[col])
        mark(bad)
    if "rating" in pdf.columns:
        out["rating"] = pd.to_numeric(pdf["rating"], errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan)
        mark(~np.isfinite(out["rating"]))
    mark(~is_member(out["item_id"], catalog))
    for c in extras:
        out[c] = pdf[c].to_numpy()
    out[MID] = pdf[MID].to_numpy()
    out[REASON] = reason
    return pd.DataFrame(out, copy=False)


class _Source:
    """Raw events as a Spark DataFrame (string or typed columns, plus ``_mid`` and ``_file``)."""

    def __init__(self, df: "DataFrame", file: str, single_file: bool,
                 labels_from: tuple[float, float] | None = None) -> None:
        self.df, self.file, self.single_file, self.labels_from = df, file, single_file, labels_from


def _strip_columns(df: "DataFrame") -> "DataFrame":
    return df.toDF(*[str(c).strip() for c in df.columns])


def _read_events_file(spark: "SparkSession", path: str, what: str = "events") -> tuple["DataFrame", bool]:
    """Parquet (``.parquet``/``.pq`` or a folder) or CSV with a header, from a local path or any URI.

    CSV columns come in as strings: validation types them (as the local reader's inference would).
    """
    local = not is_uri(path)
    if local and not Path(path).exists():
        raise DataError(f"{what} file not found", file=str(path))
    single = not local or Path(path).is_file()
    lower = str(path).lower().rstrip("/")
    try:
        if lower.endswith((".parquet", ".pq")) or (local and Path(path).is_dir()):
            df = spark.read.parquet(str(path))
        else:
            df = spark.read.option("header", True).option("inferSchema", False).csv(str(path))
    except Exception as exc:  # AnalysisException and friends: report as a data problem
        raise DataError(f"cannot read {what}: {str(exc).splitlines()[0]}", file=str(path)) from None
    return _strip_columns(df), single and not (is_uri(path) and any(ch in path for ch in "*?"))


def _movielens_events(spark: "SparkSession", layout: str, events_file: str) -> "DataFrame":
    """The ratings file of one MovieLens layout, as strings named user_id, item_id, rating, timestamp."""
    names = ["user_id", "item_id", "rating", "timestamp"]
    schema = ", ".join(f"`{n}` string" for n in names)
    reader = spark.read.option("quote", "").option("header", False)
    if layout == "ml-100k":
        return reader.schema(schema).option("sep", "\t").csv(events_file)
    if layout == "ml-1m":
        return reader.schema(schema).option("sep", "::").csv(events_file)
    df = _strip_columns(spark.read.option("header", True).csv(events_file))
    require_columns(pd.DataFrame(columns=df.columns), ["userId", "movieId", "rating", "timestamp"], events_file,
                    "ratings.csv")
    return df.withColumnRenamed("userId", "user_id").withColumnRenamed("movieId", "item_id")


def _load(spark: "SparkSession", cfg: Config, data_dir: Path, skipped: Counter, show_progress: bool
          ) -> tuple[pd.DataFrame, _Source, dict[str, Any], bool, list[str], tuple | None]:
    """(items, raw events, source info, strict, event columns kept, synthetic ground truth) for ``cfg.data``."""
    d: DataConfig = cfg.data
    if d.source == "synthetic":
        from qarm.data.stage import synthetic_world_items

        # The synthetic world is generated in this process (as locally); Spark takes it from there.
        world, items = synthetic_world_items(cfg, data_dir, skipped, show_progress)
        keep = ["user_id", "item_id", "timestamp", *d.label_columns]
        require_columns(world.events, keep, "<synthetic events>", "events")
        df = spark.createDataFrame(world.events[keep])
        source = {"source": "synthetic", "seed": cfg.seed}
        truth = (world.ground_truth, world.users)
        return items, _Source(df, "<synthetic events>", True), source, True, keep, truth
    if d.source == "movielens":
        from qarm.data.movielens import load_movielens, movielens_labels

        if not d.path:
            raise ConfigError("data.path: the MovieLens folder is required for source=movielens "
                              "(e.g. --set data.path=../shared/data/movielens-100k)")
        raw = load_movielens(Path(d.path), read_events=False)
        items = build_items(raw.items, file=raw.items_file, media_base=raw.root, skipped=skipped,
                            show_progress=show_progress)
        # the local label derivation's config errors, raised before any Spark job
        movielens_labels(pd.DataFrame({"rating": []}), d.label_columns, d.click_min_rating, d.like_min_rating,
                         raw.events_file)
        df = _movielens_events(spark, raw.layout, raw.events_file)
        source = {"source": "movielens", "layout": raw.layout, "path": str(Path(d.path).resolve()),
                  "items_file": raw.items_file, "events_file": raw.events_file, **raw.extras}
        src = _Source(df, raw.events_file, True, (d.click_min_rating, d.like_min_rating))
        return items, src, source, d.strict, [], None
    if d.source == "files":
        if not d.items_file or not d.events_file:
            raise ConfigError("data.items_file and data.events_file are required for source=files")
        items_path = d.items_file if is_uri(d.items_file) else str(resolve_file(d.items_file, d.path))
        events_path = d.events_file if is_uri(d.events_file) else str(resolve_file(d.events_file, d.path))
        if is_uri(items_path):  # the catalogue (not the events) is small enough to build on the driver
            raw_items, _ = _read_events_file(spark, items_path, "items")
            raw_items, media_base = raw_items.toPandas(), Path.cwd()
        else:
            raw_items, media_base = read_table(items_path, "items"), Path(items_path).parent
        items = build_items(raw_items, file=str(items_path), media_base=media_base, skipped=skipped,
                            show_progress=show_progress)
        df, single = _read_events_file(spark, events_path)
        file = events_path if is_uri(events_path) else str(Path(events_path))
        source = {"source": "files",
                  "items_file": items_path if is_uri(items_path) else str(Path(items_path).resolve()),
                  "events_file": events_path if is_uri(events_path) else str(Path(events_path).resolve())}
        return items, _Source(df, file, single), source, d.strict, [], None
    raise ConfigError(f"data.source: unknown source {d.source!r}; valid: synthetic, movielens, files")


def _spark_type(kind: str):
    from pyspark.sql import types as T

    return {"long": T.LongType(), "byte": T.ByteType(), "float": T.FloatType()}[kind]


def validate_events_spark(spark: "SparkSession", src: _Source, item_ids: np.ndarray, label_columns: list[str],
                          skipped: Counter, strict: bool, keep: list[str] | None = None
                          ) -> tuple["DataFrame", "DataFrame", int]:
    """The Spark twin of :func:`qarm.data.schema.validate_events`: (valid rows, the persisted checked rows, n valid).


    Columns: user_id, item_id, timestamp (long), labels (byte), rating (float, when present),
    the extra input columns, and ``_mid`` (input position, for the stable sort). Skips are
    counted into ``skipped``; with ``strict`` the first bad row raises the local error.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    raw = src.df
    if keep:
        raw = raw.select(*keep)
    cols = list(raw.columns)
    if src.labels_from is not None:  # MovieLens: labels come from the rating
        require_columns(pd.DataFrame(columns=cols), REQUIRED_EVENT_COLUMNS, src.file, "events")
        cols_after = cols + [c for c in label_columns if c not in cols]
    else:
        cols_after = cols
    require_columns(pd.DataFrame(columns=cols_after), [*REQUIRED_EVENT_COLUMNS, *label_columns], src.file, "events")
    has_rating = "rating" in cols_after
    typed = ["user_id", "item_id", "timestamp", *label_columns] + (["rating"] if has_rating else [])
    extras = [c for c in cols if c not in typed]
    fields = [T.StructField(c, _spark_type("long")) for c in ("user_id", "item_id", "timestamp")]
    fields += [T.StructField(c, _spark_type("byte")) for c in label_columns]
    if has_rating:
        fields.append(T.StructField("rating", _spark_type("float")))
    by_name = {f.name: f for f in raw.schema.fields}
    fields += [T.StructField(c, by_name[c].dataType) for c in extras]
    fields += [T.StructField(MID, T.LongType()), T.StructField(REASON, T.ByteType())]
    schema = T.StructType(fields)

    positioned = raw.withColumn(MID, F.monotonically_increasing_id())
    catalog = spark.sparkContext.broadcast(np.ascontiguousarray(item_ids, dtype=np.int64))
    labels_from = src.labels_from

    def run(batches):
        cat = catalog.value
        for pdf in batches:
            yield check_batch(pdf, cat, label_columns, extras, labels_from)

    val = positioned.mapInPandas(run, schema).persist(StorageLevel.MEMORY_AND_DISK)
    counts = {int(r[REASON]): int(r["count"]) for r in val.groupBy(REASON).count().collect()}
    checks = event_checks(label_columns, has_rating)
    bad_codes = sorted(k for k in counts if k > 0)
    if strict and bad_codes:
        k = bad_codes[0]
        reason, message, column = checks[k - 1]
        first = val.where(F.col(REASON) == k).agg(F.min(MID)).first()[0]
        file, row = _locate(src, positioned, first)
        val.unpersist()
        raise DataError(f"{message} ({counts[k]} such rows; set data.strict=false to skip and count them)",
                        file=file, row=row, column=column)
    for k in bad_codes:
        skipped[checks[k - 1][0]] += counts[k]
    return val.where(F.col(REASON) == 0).drop(REASON), val, counts.get(0, 0)


def _locate(src: _Source, positioned: "DataFrame", mid: int) -> tuple[str, int]:
    """(file, 1-based record number in it) of the raw row with position ``mid``."""
    from pyspark.sql import functions as F

    df = positioned.select(MID, F.input_file_name().alias(FILE))
    if src.single_file:
        return src.file, int(df.where(F.col(MID) < mid).count()) + 1
    file = df.where(F.col(MID) == mid).first()[FILE]
    return file, int(df.where((F.col(FILE) == file) & (F.col(MID) < mid)).count()) + 1


def kth_values(df: "DataFrame", column: str, ks: list[int], bounds: tuple[int, int] | None = None,
               buckets: int = HIST_BUCKETS) -> list[int]:
    """Exact k-th smallest values (0-based ``ks``) of an integer column, without sorting or collecting it.

    Each pass counts the rows of every open value range in ``buckets`` equal-width buckets (one
    aggregation for all ``ks``, at most ``buckets`` rows per range to the driver) and narrows each
    range to the bucket holding its rank; a range no wider than ``buckets`` is counted per value
    and answers exactly. Passes: about log(value range) / log(buckets), 2 for unix seconds.
    ``bounds``: (min, max) of the column when already known.
    """
    from pyspark.sql import functions as F

    if bounds is None:
        row = df.agg(F.min(column), F.max(column)).first()
        bounds = (int(row[0]), int(row[1]))
    state = {k: (int(bounds[0]), int(bounds[1]), 0) for k in ks}  # k -> (lo, hi, rows below lo)
    done: dict[int, int] = {}
    col = F.col(column)
    while len(done) < len(state):
        ranges = sorted({(lo, hi) for k, (lo, hi, _) in state.items() if k not in done})
        which = F.lit(None)
        bucket = F.lit(None)
        for r, (lo, hi) in enumerate(ranges):
            width = max(1, -(-(hi - lo + 1) // buckets))  # ceil; 1 = exact values
            inside = (col >= lo) & (col <= hi)
            which = F.when(inside, F.lit(r)).otherwise(which)
            bucket = F.when(inside, F.expr(f"(`{column}` - ({lo})) div {width}")).otherwise(bucket)
        hist: dict[int, list[tuple[int, int]]] = {r: [] for r in range(len(ranges))}
        rows = (df.select(which.alias("r"), bucket.alias("b")).where(F.col("r").isNotNull())
                .groupBy("r", "b").count().collect())
        for row in rows:
            hist[int(row["r"])].append((int(row["b"]), int(row["count"])))
        for k, (lo, hi, below) in list(state.items()):
            if k in done:
                continue
            h = sorted(hist[ranges.index((lo, hi))])
            width = max(1, -(-(hi - lo + 1) // buckets))
            cum = below + np.cumsum([c for _, c in h])
            j = int(np.searchsorted(cum, k, side="right"))  # first bucket whose cumulative count exceeds k
            b = h[j][0]
            if width == 1:
                done[k] = lo + b
                continue
            state[k] = (lo + b * width, min(hi, lo + (b + 1) * width - 1), int(cum[j - 1]) if j else below)
    return [done[k] for k in ks]


def prepare_spark(cfg: Config, run: "RunDir", show_progress: bool = True) -> dict[str, Any]:
    """Run ``prepare`` with Spark: writes items.parquet, events.parquet/ (sorted part files), data/."""
    from pyspark.sql import functions as F

    check_split_config(cfg.split)
    d = cfg.data
    if not d.label_columns:
        raise ConfigError("data.label_columns: at least one 0/1 label column is needed")
    step = StepLog("prepare")
    spark = spark_session(cfg.engine)
    step("session")
    spark.conf.set("spark.sql.shuffle.partitions", str(n_buckets(spark, cfg.engine)))
    data_dir = run.subdir("data")
    skipped: Counter = Counter()
    items, src, source, strict, keep, truth = _load(spark, cfg, data_dir, skipped, show_progress)
    item_ids = items["item_id"].to_numpy(dtype=np.int64)
    step("items")
    good, cached, n = validate_events_spark(spark, src, item_ids, list(d.label_columns), skipped, strict, keep)
    step("validate")
    try:
        if n == 0:
            raise DataError("no valid events left after validation; skipped: "
                            + ", ".join(f"{k}={v}" for k, v in sorted(skipped.items()) if v), file=src.file)
        # the split's cutoffs: the same ranks split_events reads off the time-sorted events
        sc = cfg.split
        k_train = min(n - 1, int(np.floor(n * sc.train_frac)))
        k_valid = min(n - 1, int(np.floor(n * (sc.train_frac + sc.valid_frac))))
        labels = list(d.label_columns)
        # one pass for the event-level figures (the split adds nothing to them) and the cutoffs' range
        agg = good.agg(F.min("timestamp").alias("t_min"), F.max("timestamp").alias("t_max"),
                       F.countDistinct("user_id").alias("n_users"),
                       *[F.avg(F.col(c).cast("double")).alias(f"rate_{c}") for c in labels]).first()
        t_train, t_valid = kth_values(good, "timestamp", [k_train, k_valid], (agg["t_min"], agg["t_max"]))
        step("cutoffs")
        holdout = draw_holdout(item_ids, sc.holdout_item_frac, cfg.seed)
        held = spark.createDataFrame(pd.DataFrame({"item_id": item_ids[holdout], "_held": True}),
                                     "item_id long, _held boolean")
        ev = good.join(F.broadcast(held), "item_id", "left")
        ts, is_held = F.col("timestamp"), F.coalesce(F.col("_held"), F.lit(False))
        split = (F.when(is_held, F.when(ts >= t_valid, "cold_test").otherwise("cold_excluded"))
                 .when(ts < t_train, "train").when(ts < t_valid, "valid").otherwise("test"))
        ev = ev.withColumn("split", split).drop("_held")

        # one row per (item, split): first-seen time, train count, events per split (catalogue-sized)
        per = (ev.groupBy("item_id", "split").agg(F.min("timestamp").alias("first_seen"), F.count("*").alias("n"))
               .toPandas())
        by_split = per.groupby("split")["n"].sum()
        stats = per.groupby("item_id").agg(first_seen=("first_seen", "min")).reset_index()
        train_n = per[per["split"] == "train"].set_index("item_id")["n"]
        stats["train_count"] = stats["item_id"].map(train_n).fillna(0).astype(np.int64)
        rows = IdIndex(item_ids, assume_sorted=True).rows(stats["item_id"].to_numpy(dtype=np.int64))
        first_seen = np.full(len(item_ids), np.iinfo(np.int64).max, dtype=np.int64)
        train_count = np.zeros(len(item_ids), dtype=np.int64)
        first_seen[rows] = stats["first_seen"].to_numpy(dtype=np.int64)
        train_count[rows] = stats["train_count"].to_numpy(dtype=np.int64)
        items = items.copy()
        items["holdout"] = holdout
        items["cold"] = holdout | (first_seen >= t_train)
        items["train_count"] = train_count
        items["freq_bucket"] = freq_buckets(train_count, list(sc.freq_bucket_edges))
        step("item flags")

        typed = ["user_id", "item_id", "timestamp", *labels] + (["rating"] if "rating" in good.columns else [])
        extras = [c for c in good.columns if c not in typed and c != MID]
        out = ev.orderBy("timestamp", "user_id", "item_id", MID).select(*typed, *extras, "split")
        if truth is not None:
            write_parquet(data_dir / "ground_truth.parquet", truth[0][["item_id", "topic", "business",
                                                                       "introduced_at", "popularity", "quality"]])
            write_parquet(data_dir / "users_ground_truth.parquet", truth[1])
        write_json(data_dir / "source.json", source)
        write_parquet(run / "items.parquet", _items_table(items))
        write_dataset(out, run / "events.parquet", cfg.engine.export_uri)
        step("sort + write events")
    finally:
        cached.unpersist()
    n_items = len(items)
    share = (lambda col: round(float(items[col].mean()), 6) if n_items else 0.0)
    return {
        "n_users": int(agg["n_users"]),
        "n_items": n_items,
        "n_events": n,
        "n_cold_items": int(items["cold"].sum()),
        "n_holdout_items": int(items["holdout"].sum()),
        "n_events_by_split": {s: int(by_split.get(s, 0)) for s in SPLITS},
        "skipped": {k: int(v) for k, v in sorted(skipped.items())},
        "modality_coverage": {m: share(f"has_{m}") for m in ("text", "image", "audio")},
        "modality_items": {m: int(items[f"has_{m}"].sum()) for m in ("text", "image", "audio")},
        "label_rate": {c: round(float(agg[f"rate_{c}"]), 6) for c in labels},
        "freq_buckets": {str(k): int(v) for k, v in items["freq_bucket"].value_counts().sort_index().items()},
        "train_cutoff": int(t_train),
        "valid_cutoff": int(t_valid),
        "source": source,
        "engine": "spark",
    }


def _items_table(items: pd.DataFrame):
    from qarm.data.stage import items_table

    return items_table(items)
