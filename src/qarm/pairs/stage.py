"""The ``pairs`` stage: U2I two-tower + trigger mining, and Swing I2I, into pairs.parquet.

Reads items.parquet and events.parquet (train-split positives for everything that is learned or
mined; valid-split positives only to measure U2I recall). Writes pairs.parquet (trigger_id,
target_id, source, score; unordered duplicates removed), pairs/u2i_item_emb.npy (items order) and
pairs/u2i_model.pt (the U2I model, also its per-epoch checkpoint).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from qarm.blocks import block_rows, query_cap
from qarm.config import Config
from qarm.distributed import check_device, init_distributed, leave_process_group, resolve_device, world
from qarm.errors import ConfigError
from qarm.io import path_sha256, read_parquet, write_npy, write_parquet
from qarm.pairs.history import Histories
from qarm.pairs.inputs import Positives, load_positives, read_events
from qarm.pairs.quality import business_agreement
from qarm.pairs.swing import Swing
from qarm.pairs.triggers import mine_triggers
from qarm.pairs.twotower import U2IRetriever, recall_hits
from qarm.runner import RunDir
from qarm.sample import sample_rows

SOURCES = ("u2i", "i2i")
RECALL_KS = (10, 50, 100)
PAIRS_SCHEMA = pa.schema([("trigger_id", pa.int64()), ("target_id", pa.int64()), ("source", pa.string()),
                          ("score", pa.float32())])


def run_pairs(cfg: Config, run: RunDir) -> dict:
    if cfg.engine.name == "spark":  # same artifacts, computed with PySpark DataFrames (qarm.engine)
        from qarm.engine.spark_pairs import pairs_spark

        return pairs_spark(cfg, run)
    pc = cfg.pairs
    bad = [s for s in pc.sources if s not in SOURCES]
    if bad or not pc.sources:
        raise ConfigError(f"pairs.sources: {bad[0] if bad else 'empty'!r} is not a pair source; "
                          f"choose from {', '.join(SOURCES)}")
    check_device(pc.device, "pairs.device")
    items_file, events_file = str(run / "items.parquet"), str(run / "events.parquet")
    # only the columns this stage reads; the full pandas table is never built
    items, events = run.items(), read_events(events_file, pc.label)
    train = load_positives(items, events, pc.label, "train", items_file, events_file)
    valid = load_positives(items, events, pc.label, "valid", items_file, events_file)
    test = load_positives(items, events, pc.label, "test", items_file, events_file)
    del events
    item_ids = items["item_id"].to_numpy(dtype=np.int64)
    metrics: dict = {"n_items": len(items), **train.counts}

    # U2I: always trained (its item embedding is an artifact of this stage), pairs only if asked
    device = resolve_device(pc.device, "pairs.device")
    init_distributed(device)  # under torchrun: every rank trains on its shard of each batch (DDP)
    u2i = make_u2i(cfg, len(items), device)
    key = f"{cfg.section_hash(['pairs'])}:{path_sha256(run / 'events.parquet')}"
    rank = world()[0]
    u2i.fit(train.user, train.item, train.time, checkpoint=run.subdir("pairs") / "u2i_model.pt", checkpoint_key=key)
    leave_process_group()   # the collective part ends here
    if rank != 0:
        return {}  # the other ranks only helped train; rank 0 mines, evaluates and writes
    emb = u2i.item_embeddings()
    write_npy(run / "pairs" / "u2i_item_emb.npy", emb)
    metrics["u2i_final_loss"] = float(u2i.loss_history_[-1]) if u2i.loss_history_ else float("nan")
    metrics.update(u2i_recall(u2i, train, valid, test, query_cap(pc.eval_max_users, u2i.n_items, pc.eval_max_scores),
                              cfg.seed))

    tables = []
    for source in pc.sources:
        if source == "u2i":
            trig, targ, score, _ = mine_triggers(train.user, train.item, train.time, emb, pc.trigger_window)
            metrics["n_events_without_trigger"] = int(len(train.user) - len(trig))
            keep = score > pc.trigger_min_score
            tables.append(_table(item_ids[trig[keep]], item_ids[targ[keep]], "u2i", score[keep]))
        else:
            swing = Swing(pc.swing_alpha, pc.swing_max_user_history, pc.swing_max_item_users, pc.swing_topn,
                          random_state=cfg.seed).fit(train.user, train.item, train.time)
            a, b, score = swing.pairs(pc.swing_min_score, pc.swing_mutual)
            metrics["n_repeat_positives"] = int(swing.n_repeats_)
            tables.append(_table(item_ids[a], item_ids[b], "i2i", score))
    pairs, n_dup = dedupe_unordered(pd.concat(tables, ignore_index=True))
    write_parquet(run / "pairs.parquet", pa.Table.from_pandas(pairs, schema=PAIRS_SCHEMA, preserve_index=False))

    touched = np.unique(np.concatenate([pairs["trigger_id"].to_numpy(), pairs["target_id"].to_numpy()]))
    metrics.update({
        "n_u2i": int((pairs["source"] == "u2i").sum()),
        "n_i2i": int((pairs["source"] == "i2i").sum()),
        "n_pairs": len(pairs),
        "n_duplicate_pairs": n_dup,
        "item_coverage": len(touched) / max(len(items), 1),
        "item_coverage_of_positive_items": len(touched) / max(len(items) - train.counts["n_items_never_positive"], 1),
    })
    truth_path = run / "data" / "ground_truth.parquet"
    if truth_path.exists() and len(pairs):
        metrics.update(business_agreement(pairs, items, read_parquet(truth_path), cfg.seed))
    return metrics


def make_u2i(cfg: Config, n_items: int, device) -> U2IRetriever:
    """The U2I model ``cfg.pairs`` describes (both engines build it here, so they train the same model)."""
    pc = cfg.pairs
    return U2IRetriever(n_items, dim=pc.u2i_dim, history=pc.u2i_history, epochs=pc.u2i_epochs,
                        batch_size=pc.u2i_batch_size, lr=pc.u2i_lr, temperature=pc.u2i_temperature, logq=pc.u2i_logq,
                        pooling=pc.u2i_pooling, item_bias=pc.u2i_item_bias, recency=pc.u2i_recency,
                        user_dropout=pc.u2i_user_dropout, n_negatives=pc.u2i_negatives, neg_alpha=pc.u2i_neg_alpha,
                        history_gap=pc.u2i_history_gap, score_temperature=pc.u2i_score_temperature,
                        weight_decay=pc.u2i_weight_decay, sparse=pc.u2i_sparse, device=str(device), seed=cfg.seed)


def _table(trigger: np.ndarray, target: np.ndarray, source: str, score: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"trigger_id": trigger.astype(np.int64), "target_id": target.astype(np.int64),
                         "source": source, "score": score.astype(np.float32)})


def dedupe_unordered(pairs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep the first row of every unordered item pair {trigger, target} (sources in the given order,
    highest score first within a source). Returns (pairs sorted deterministically, rows dropped)."""
    src_rank = pairs["source"].map({s: k for k, s in enumerate(dict.fromkeys(pairs["source"]))})
    a, b = pairs["trigger_id"].to_numpy(), pairs["target_id"].to_numpy()
    keyed = pairs.assign(_src=src_rank.to_numpy(), _lo=np.minimum(a, b), _hi=np.maximum(a, b))
    keyed = keyed[keyed["_lo"] != keyed["_hi"]]
    keyed = keyed.sort_values(["_src", "score", "trigger_id", "target_id"], ascending=[True, False, True, True],
                              kind="stable")
    out = keyed.drop_duplicates(["_lo", "_hi"], keep="first")
    out = out.sort_values(["_src", "trigger_id", "target_id"], kind="stable")
    return out.drop(columns=["_src", "_lo", "_hi"]).reset_index(drop=True), int(len(pairs) - len(out))


def _recall(u2i: U2IRetriever, history: Positives, targets: Positives, max_users: int = 0, seed: int = 0,
            block: int = 1024, split: str = "valid") -> dict:
    """Recall@k of each user's first positive in ``targets`` over the whole catalogue, two-tower vs
    popularity.

    The user tower sees the user's latest ``history`` positives; both rankers exclude them (never the
    target). Users are scored ``block`` at a time: memory is O(block x items), never a users x items
    matrix; above ``max_users`` users a seeded sample of them is scored, so the cost is
    O(max_users x items), not O(users x items). ``split`` names the figures: ``u2i_recall@k`` for
    valid, else ``u2i_test_recall@k``, ``popularity_test_recall@k``.
    """
    tag = "" if split == "valid" else f"{split}_"
    if len(targets.user) == 0:
        return {f"n_{split}_users": 0}
    order = np.lexsort((targets.time, targets.user))
    first = order[np.r_[True, targets.user[order][1:] != targets.user[order][:-1]]]
    n_users = len(first)
    first = first[sample_rows(len(first), max_users, seed)]
    users, target_items = targets.user[first], targets.item[first]
    hist = Histories.build(history.user, history.item, history.time, u2i.history)
    seen, seen_indptr = hist.seen(users)
    score = u2i.scorer()
    block = block_rows(u2i.n_items, block)      # a block of scores is O(cells) whatever the catalogue
    model = recall_hits(lambda rows: score(users[rows], hist.latest(users[rows])), target_items, seen, seen_indptr,
                        RECALL_KS, block)
    counts = u2i.item_counts_.astype(np.float32)
    pop = recall_hits(lambda rows: np.broadcast_to(counts, (rows.stop - rows.start, len(counts))), target_items, seen,
                      seen_indptr, RECALL_KS, block)
    n = len(users)
    out = {f"n_{split}_users": int(n_users), f"n_{split}_users_scored": int(n)}
    out.update({f"u2i_{tag}recall@{k}": v / n for k, v in model.items()})
    out.update({f"popularity_{tag}recall@{k}": v / n for k, v in pop.items()})
    return out


def u2i_recall(u2i: U2IRetriever, train: Positives, valid: Positives, test: Positives, max_users: int,
               seed: int) -> dict:
    """The stage's U2I figures: recall of the first valid positive (history: train positives), the
    split the defaults were tuned on, and of the first test positive (history: train and valid
    positives), the unbiased check; popularity beside each."""
    out = _recall(u2i, train, valid, max_users, seed)
    seen = Positives(*(np.concatenate([getattr(train, a), getattr(valid, a)]) for a in ("user", "item", "time")))
    out.update(_recall(u2i, seen, test, max_users, seed, split="test"))
    return out
