"""The ``pairs`` stage on Spark: positives, Swing and trigger mining as DataFrames; U2I in PyTorch.

Flow (each step a Spark job over DataFrames; the driver receives only per-item or per-bucket data):

1. train/valid/test positives are selected, mapped to catalogue rows (broadcast join) and
   de-duplicated as ``qarm.pairs.inputs.load_positives`` does, then written as Parquet
   (``pairs/positives_<split>.parquet``), sorted as the local arrays are. The U2I two-tower
   trains in PyTorch on what it reads back from the train file; valid and test measure it.
2. Triggers: events are grouped into user buckets and each bucket runs the local
   :func:`qarm.pairs.triggers.mine_triggers` in ``applyInPandas`` (a user's window never crosses
   buckets), with the U2I item embeddings broadcast.
3. Swing: the caps run as window functions. The users-per-item sample uses the same random key per
   (user, item) as the local ``cap_interactions``: the key of the row at global position p of
   the local order is draw p of the seeded PCG64 stream, reached with ``PCG64.advance(p)``. Anchor
   items are then bucketed; each bucket gets the full capped histories of its anchors' users and
   runs the local Swing chunk kernel on exactly those anchors.
4. Pair de-duplication and ordering as :func:`qarm.pairs.stage.dedupe_unordered`, as a window.

Tie-breaks are the local ones (stable orders are reproduced with explicit sort keys), so the pairs
and scores match the local engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from qarm.blocks import query_cap
from qarm.config import Config
from qarm.errors import ConfigError, DataError
from qarm.engine.session import StepLog, n_buckets, spark_session, write_dataset
from qarm.io import path_sha256, read_parquet, write_npy
from qarm.pairs.inputs import EVENT_COLUMNS, Positives, validate
from qarm.pairs.swing import Swing, _chunk_bounds, _score_anchor_chunk, rank_within_groups
from qarm.pairs.triggers import mine_triggers

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from qarm.runner import RunDir

MID, FILE = "_mid", "_file"
NUMPY_OF_SPARK = {"tinyint": np.int8, "smallint": np.int16, "int": np.int32, "bigint": np.int64,
                  "float": np.float32, "double": np.float64, "boolean": np.bool_}


def _position(df: "DataFrame", cond) -> int:
    """0-based position, in reading order (files by name, rows in file order), of the first row with ``cond``.

    ``df`` carries ``_mid`` and ``_file`` columns.
    """
    from pyspark.sql import functions as F

    first = df.where(cond).orderBy(FILE, MID).select(FILE, MID).first()
    f, m = first[FILE], first[MID]
    return int(df.where((F.col(FILE) < f) | ((F.col(FILE) == f) & (F.col(MID) < m))).count())


def check_events(spark: "SparkSession", events: "DataFrame", items: pd.DataFrame, label: str, items_file: str,
                 events_file: str) -> None:
    """The checks of :func:`qarm.pairs.inputs.validate`, same messages: items on the driver, events in Spark."""
    from pyspark.sql import functions as F

    validate(items, pd.DataFrame(columns=events.columns), label, items_file, events_file)  # columns, catalogue
    cols = ["user_id", "item_id", "timestamp", label]
    lab = F.col(label)
    row = events.agg(*[F.sum(F.col(c).isNull().cast("long")).alias(c) for c in cols],
                     F.sum((lab.isNotNull() & (lab != 0) & (lab != 1)).cast("long")).alias("_bad_label")).first()
    for c in cols:
        if row[c]:
            raise DataError(f"null value ({int(row[c])} rows)", file=events_file,
                            row=_position(events, F.col(c).isNull()), column=c)
    if row["_bad_label"]:
        cond = (lab != 0) & (lab != 1)
        pos = _position(events, cond)
        value = events.where(cond).orderBy(FILE, MID).select(label).first()[0]
        dtype = NUMPY_OF_SPARK.get(dict(events.dtypes)[label], object)
        raise DataError(f"label must be 0 or 1, got {np.array([value], dtype=dtype)[0]!r}", file=events_file,
                        row=pos, column=label)


def positives(spark: "SparkSession", events: "DataFrame", rows: "DataFrame", label: str, split: str,
              n_items: int, events_file: str) -> tuple["DataFrame", dict[str, int]]:
    """Positives of ``split`` as (user_id, item: catalogue row, timestamp), de-duplicated, plus the counts
    ``load_positives`` reports. Unknown items are the local DataError."""
    from pyspark.sql import functions as F

    pos = events.where((F.col("split") == split) & (F.col(label) == 1)).join(F.broadcast(rows), "item_id", "left")
    unknown = pos.where(F.col("item").isNull())
    n_unknown = unknown.count()
    if n_unknown:
        first = unknown.orderBy(FILE, MID).first()
        at = _position(events, (F.col(FILE) == first[FILE]) & (F.col(MID) == first[MID]))
        raise DataError(f"item_id {int(first['item_id'])} is not in items.parquet "
                        f"({n_unknown} such events); every event's item must be in the catalogue",
                        file=events_file, row=at, column="item_id")
    dedup = pos.groupBy("user_id", "item", "timestamp").agg(F.count("*").alias("_n"))
    per_user = dedup.groupBy("user_id").agg(F.count("*").alias("c"))
    stats = dedup.agg(F.count("*").alias("n"), F.sum("_n").alias("rows"),
                      F.countDistinct("item").alias("items")).first()
    users = per_user.agg(F.count("*").alias("n"), F.sum((F.col("c") == 1).cast("long")).alias("single")).first()
    n, n_rows = int(stats["n"]), int(stats["rows"] or 0)
    counts = {
        "n_positives": n,
        "n_duplicate_events": n_rows - n,
        "n_users": int(users["n"]),
        "n_users_single_event": int(users["single"] or 0),
        "n_items_never_positive": int(n_items - (stats["items"] or 0)),
    }
    return dedup.select("user_id", "item", "timestamp"), counts


def read_positives(path, counts: dict[str, int]) -> Positives:
    """The Parquet positives Spark wrote, as the local :class:`Positives` (rows already in local order)."""
    t = read_parquet(path)
    return Positives(t["user_id"].to_numpy(np.int64), t["item"].to_numpy(np.int64),
                     t["timestamp"].to_numpy(np.int64), counts)


def trigger_pairs(spark: "SparkSession", pos: "DataFrame", emb: np.ndarray, item_ids: np.ndarray, window: int,
                  min_score: float, buckets: int) -> "DataFrame":
    """Triggers of every train positive, by user bucket with the local kernel.

    Returns a DataFrame (trigger_id, target_id, score float, keep: score > ``min_score``).
    """
    from pyspark.sql import functions as F

    emb_b = spark.sparkContext.broadcast(np.ascontiguousarray(emb, dtype=np.float32))
    ids_b = spark.sparkContext.broadcast(np.ascontiguousarray(item_ids, dtype=np.int64))

    def mine(pdf: pd.DataFrame) -> pd.DataFrame:
        # the local input order: (time, user, item); mine_triggers' stable (user, time) sort keeps it for ties
        pdf = pdf.sort_values(["timestamp", "user_id", "item"], kind="stable")
        trig, targ, score, _ = mine_triggers(pdf["user_id"].to_numpy(np.int64), pdf["item"].to_numpy(np.int64),
                                             pdf["timestamp"].to_numpy(np.int64), emb_b.value, window,
                                             progress=False)
        ids = ids_b.value
        return pd.DataFrame({"trigger_id": ids[trig], "target_id": ids[targ], "score": score,
                             "keep": score > min_score})

    bucket = F.pmod(F.xxhash64("user_id"), F.lit(buckets))
    return (pos.withColumn("_b", bucket).groupBy("_b")
            .applyInPandas(mine, "trigger_id long, target_id long, score float, keep boolean"))


def swing_keys(p: np.ndarray, seed: int) -> np.ndarray:
    """Draws ``p`` (int64 [n], sorted) of ``np.random.default_rng(seed).random(...)``: float64 [n].

    Each run of consecutive positions costs one ``PCG64.advance`` (one 64-bit draw per double).
    """
    out = np.empty(len(p), dtype=np.float64)
    if not len(p):
        return out
    starts = np.flatnonzero(np.r_[True, np.diff(p) != 1])
    ends = np.r_[starts[1:], len(p)]
    for s, e in zip(starts, ends):
        bitgen = np.random.PCG64(seed)
        bitgen.advance(int(p[s]))
        out[s:e] = np.random.Generator(bitgen).random(int(e - s))
    return out


def capped_edges(spark: "SparkSession", pos: "DataFrame", max_user_history: int, max_item_users: int, seed: int,
                 buckets: int) -> tuple["DataFrame", int, list]:
    """Spark twin of :func:`qarm.pairs.swing.cap_interactions`.

    Returns (edges (user_id, item), repeated (user, item) rows dropped, DataFrames to unpersist).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    n_rows = pos.count()
    ui = pos.groupBy("user_id", "item").agg(F.max("timestamp").alias("t"))  # each pair's latest occurrence
    by_recency = Window.partitionBy("user_id").orderBy(F.col("t").desc(), F.col("item").asc())
    ranked = ui.withColumn("r", F.row_number().over(by_recency)).persist()
    n_repeats = n_rows - ranked.count()
    ui = ranked.where(F.col("r") <= max_user_history)
    # global position in the local order (user asc, time desc, item asc): user offset + rank - 1,
    # offsets from a prefix sum over users, done per user range (ranges from approximate quantiles)
    per_user = ui.groupBy("user_id").agg(F.count("*").alias("c"))
    qs = per_user.approxQuantile("user_id", [i / buckets for i in range(1, buckets)], 0.001)
    bounds = np.unique(np.asarray(qs, dtype=np.int64))

    def which(pdf_iter):
        for pdf in pdf_iter:
            pdf["g"] = np.searchsorted(bounds, pdf["user_id"].to_numpy(np.int64), side="right").astype(np.int64)
            yield pdf

    per_user = per_user.mapInPandas(which, "user_id long, c long, g long").persist()
    totals = per_user.groupBy("g").agg(F.sum("c").alias("s")).toPandas().sort_values("g")
    offs = pd.DataFrame({"g": totals["g"].to_numpy(np.int64),
                         "g_off": np.r_[0, np.cumsum(totals["s"].to_numpy(np.int64))[:-1]]})
    within = Window.partitionBy("g").orderBy("user_id").rowsBetween(Window.unboundedPreceding, -1)
    starts = (per_user.withColumn("u_off", F.coalesce(F.sum("c").over(within), F.lit(0)))
              .join(F.broadcast(spark.createDataFrame(offs, "g long, g_off long")), "g")
              .select("user_id", (F.col("g_off") + F.col("u_off")).alias("start")))
    ui = ui.join(starts, "user_id").withColumn("p", F.col("start") + F.col("r") - 1)

    def keys(pdf_iter):
        for pdf in pdf_iter:
            pdf = pdf.sort_values("p", kind="stable")
            pdf["key"] = swing_keys(pdf["p"].to_numpy(np.int64), seed)
            yield pdf[["user_id", "item", "p", "key"]]

    keyed = (ui.select("user_id", "item", "p").repartitionByRange(buckets, "p").sortWithinPartitions("p")
             .mapInPandas(keys, "user_id long, item long, p long, key double"))
    by_key = Window.partitionBy("item").orderBy("key", "p")
    edges = (keyed.withColumn("r", F.row_number().over(by_key)).where(F.col("r") <= max_item_users)
             .select("user_id", "item"))
    return edges, n_repeats, [ranked, per_user]


def swing_bucket(pdf: pd.DataFrame, bucket: int, buckets: int, n_cols: int, alpha: float, topn: int,
                 chunk_budget: int, pair_budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``topn`` Swing neighbours of the anchors of one bucket (items with ``item % buckets == bucket``).

    pdf: the capped edges (user_id, item row) of every user of those anchors, their whole histories.
    The scores equal ``Swing.fit``'s: the chunk kernel needs, per anchor, only its users and their
    full histories. Returns (anchor int64 [k], neighbour int64 [k], score float32 [k]) sorted by
    anchor, then rank.
    """
    users, u = np.unique(pdf["user_id"].to_numpy(np.int64), return_inverse=True)
    item = pdf["item"].to_numpy(np.int64)
    X = sp.csr_matrix((np.ones(len(u)), (u, item)), shape=(len(users), n_cols))
    X.sum_duplicates()
    weight = 1.0 / np.sqrt(np.diff(X.indptr).astype(np.float64))
    Xc = X.tocsc()
    present = np.flatnonzero(np.diff(Xc.indptr) > 0)
    anchors = present[present % buckets == bucket]
    csum = np.r_[0, np.cumsum(np.diff(X.indptr)[Xc.indices])]
    cost = csum[Xc.indptr[anchors + 1]] - csum[Xc.indptr[anchors]]
    bounds = _chunk_bounds(cost, chunk_budget)
    todo = [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])][::-1]
    out_a, out_n, out_s = [], [], []
    while todo:
        lo, hi = todo.pop()
        res = _score_anchor_chunk(X, Xc, weight, anchors[lo:hi], alpha, pair_budget)
        if res is None:  # too many user-pair triples: halve, as Swing.fit does
            mid = (lo + hi) // 2
            todo += [(mid, hi), (lo, mid)]
            continue
        a, nb, score = res
        keep = (nb != a) & (score > 0)
        a, nb, score = a[keep], nb[keep], score[keep]
        order = np.lexsort((nb, -score, a))  # Swing.fit's tie-break: neighbour row
        a, nb, score = a[order], nb[order], score[order]
        top = rank_within_groups(a) < topn
        out_a.append(a[top])
        out_n.append(nb[top])
        out_s.append(score[top].astype(np.float32))
    if not out_a:
        z = np.zeros(0, dtype=np.int64)
        return z, z, np.zeros(0, dtype=np.float32)
    return np.concatenate(out_a), np.concatenate(out_n), np.concatenate(out_s)


def swing_pairs(spark: "SparkSession", pos: "DataFrame", cfg: Config, item_ids: np.ndarray, buckets: int
                ) -> tuple["DataFrame", int, list]:
    """Swing I2I pairs as ``Swing(...).fit(...).pairs(...)`` gives them: DataFrame (trigger_id, target_id, score)."""
    from pyspark.sql import functions as F

    pc = cfg.pairs
    ref = Swing(pc.swing_alpha, pc.swing_max_user_history, pc.swing_max_item_users, pc.swing_topn,
                random_state=cfg.seed)  # the local estimator's parameters and memory budgets
    edges, n_repeats, cached = capped_edges(spark, pos, ref.max_user_history, ref.max_item_users, ref.random_state,
                                            buckets)
    edges = edges.persist()
    cached.append(edges)
    user_buckets = edges.select("user_id", F.pmod(F.col("item"), F.lit(buckets)).alias("_b")).distinct()
    grouped = user_buckets.join(edges, "user_id")
    n_cols = len(item_ids)
    ids_b = spark.sparkContext.broadcast(np.ascontiguousarray(item_ids, dtype=np.int64))
    alpha, topn, chunk_budget, pair_budget = ref.alpha, ref.topn, ref.chunk_budget, ref.pair_budget
    min_score = pc.swing_min_score

    def score(pdf: pd.DataFrame) -> pd.DataFrame:
        a, nb, s = swing_bucket(pdf, int(pdf["_b"].iloc[0]), buckets, n_cols, alpha, topn, chunk_budget,
                                pair_budget)
        keep = s > min_score  # Swing.pairs: float32 scores against the threshold, as locally
        ids = ids_b.value
        return pd.DataFrame({"trigger_id": ids[a[keep]], "target_id": ids[nb[keep]], "score": s[keep]})

    pairs = grouped.groupBy("_b").applyInPandas(score, "trigger_id long, target_id long, score float")
    if pc.swing_mutual:
        rev = pairs.select(F.col("target_id").alias("trigger_id"), F.col("trigger_id").alias("target_id"))
        pairs = pairs.join(rev, ["trigger_id", "target_id"], "left_semi")
    return pairs, n_repeats, cached


def dedupe_pairs(tables: list["DataFrame"]) -> "DataFrame":
    """Spark twin of :func:`qarm.pairs.stage.dedupe_unordered`: one row per unordered pair, sorted."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    allp = tables[0]
    for t in tables[1:]:
        allp = allp.unionByName(t)
    lo, hi = F.least("trigger_id", "target_id"), F.greatest("trigger_id", "target_id")
    allp = allp.withColumn("_lo", lo).withColumn("_hi", hi).where(F.col("_lo") != F.col("_hi"))
    best = Window.partitionBy("_lo", "_hi").orderBy(F.col("_src").asc(), F.col("score").desc(),
                                                    F.col("trigger_id").asc(), F.col("target_id").asc())
    kept = allp.withColumn("_r", F.row_number().over(best)).where(F.col("_r") == 1)
    return (kept.orderBy("_src", "trigger_id", "target_id")
            .select("trigger_id", "target_id", "source", F.col("score").cast("float").alias("score")))


def pairs_spark(cfg: Config, run: "RunDir") -> dict[str, Any]:
    """Run ``pairs`` with Spark; same artifacts and figures as :func:`qarm.pairs.stage.run_pairs`."""
    from pyspark.sql import functions as F

    from qarm.distributed import resolve_device
    from qarm.pairs.quality import business_agreement
    from qarm.pairs.stage import SOURCES, make_u2i, u2i_recall

    pc = cfg.pairs
    bad = [s for s in pc.sources if s not in SOURCES]
    if bad or not pc.sources:
        raise ConfigError(f"pairs.sources: {bad[0] if bad else 'empty'!r} is not a pair source; "
                          f"choose from {', '.join(SOURCES)}")
    step = StepLog("pairs")
    spark = spark_session(cfg.engine)
    step("session")
    buckets = n_buckets(spark, cfg.engine)
    spark.conf.set("spark.sql.shuffle.partitions", str(buckets))
    items = run.items()
    items_file, events_file = str(run / "items.parquet"), str(run / "events.parquet")
    run.require("events.parquet", "prepare")
    events = (spark.read.parquet(str((run / "events.parquet").resolve()))
              .withColumn(MID, F.monotonically_increasing_id()).withColumn(FILE, F.input_file_name()))
    check_events(spark, events, items, pc.label, items_file, events_file)
    step("check events")
    events = events.select(*EVENT_COLUMNS, pc.label, MID, FILE)
    item_ids = items["item_id"].to_numpy(dtype=np.int64)
    rows = spark.createDataFrame(pd.DataFrame({"item_id": item_ids, "item": np.arange(len(item_ids))}),
                                 "item_id long, item long")
    out_dir = run.subdir("pairs")
    found = {}
    for split in ("train", "valid", "test"):
        df, counts = positives(spark, events, rows, pc.label, split, len(items), events_file)
        path = out_dir / f"positives_{split}.parquet"
        # local order of the positive arrays: events order (time, user, item) with duplicates dropped
        write_dataset(df.orderBy("timestamp", "user_id", "item"), path)
        found[split] = (path, counts)
        step(f"{split} positives")
    train = read_positives(*found["train"])
    valid = read_positives(*found["valid"])
    test = read_positives(*found["test"])
    metrics: dict = {"n_items": len(items), **train.counts}

    # U2I: PyTorch, on the positives Spark wrote (as run_pairs does it)
    u2i = make_u2i(cfg, len(items), resolve_device(pc.device, "pairs.device"))
    key = f"{cfg.section_hash(['pairs'])}:{path_sha256(run / 'events.parquet')}"
    u2i.fit(train.user, train.item, train.time, checkpoint=out_dir / "u2i_model.pt", checkpoint_key=key)
    emb = u2i.item_embeddings()
    write_npy(out_dir / "u2i_item_emb.npy", emb)
    metrics["u2i_final_loss"] = float(u2i.loss_history_[-1]) if u2i.loss_history_ else float("nan")
    metrics.update(u2i_recall(u2i, train, valid, test, query_cap(pc.eval_max_users, u2i.n_items, pc.eval_max_scores),
                              cfg.seed))
    step("u2i (PyTorch)")

    pos = spark.read.parquet(str(found["train"][0].resolve())).persist()
    cached = [pos]
    try:
        tables = []
        for rank, source in enumerate(pc.sources):
            if source == "u2i":
                trig = trigger_pairs(spark, pos, emb, item_ids, pc.trigger_window, pc.trigger_min_score,
                                     buckets).persist()
                cached.append(trig)
                metrics["n_events_without_trigger"] = int(len(train.user) - trig.count())
                t = trig.where("keep").drop("keep")
                step("triggers")
            else:
                t, n_repeats, more = swing_pairs(spark, pos, cfg, item_ids, buckets)
                t = t.persist()
                cached += more + [t]
                metrics["n_repeat_positives"] = int(n_repeats)
                step("swing caps")
            tables.append(t.withColumn("source", F.lit(source)).withColumn("_src", F.lit(rank)))
        n_all = sum(int(t.count()) for t in tables)
        step("pair tables")
        pairs = dedupe_pairs(tables)
        write_dataset(pairs, run / "pairs.parquet", cfg.engine.export_uri)
        step("dedupe + write")
    finally:
        for c in cached:
            c.unpersist()
    out = spark.read.parquet(str((run / "pairs.parquet").resolve())).persist()
    by_source = {r["source"]: int(r["count"]) for r in out.groupBy("source").count().collect()}
    n_pairs = sum(by_source.values())
    touched = (out.select(F.col("trigger_id").alias("i")).union(out.select(F.col("target_id").alias("i")))
               .distinct().count())
    out.unpersist()
    metrics.update({
        "n_u2i": by_source.get("u2i", 0),
        "n_i2i": by_source.get("i2i", 0),
        "n_pairs": n_pairs,
        "n_duplicate_pairs": n_all - n_pairs,
        "item_coverage": touched / max(len(items), 1),
        "item_coverage_of_positive_items": touched / max(len(items) - train.counts["n_items_never_positive"], 1),
    })
    truth_path = run / "data" / "ground_truth.parquet"
    if truth_path.exists() and n_pairs:  # synthetic worlds only: small enough to score on the driver
        metrics.update(business_agreement(read_parquet(run / "pairs.parquet"), items, read_parquet(truth_path),
                                          cfg.seed))
    step("figures")
    metrics["engine"] = "spark"
    return metrics
