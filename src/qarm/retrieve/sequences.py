"""Leave-one-out user sequences, the protocol of the generative-retrieval literature.

Per user, the interactions (events of non-excluded splits, optionally those with a positive label) in
time order: the last one is the test target, the last non-held-out one before it the valid target, and
the non-held-out ones before that the training sequence. Held-out items never enter a training sequence
or a history (qarm's strict cold-start rule); they may only be test targets, which is what the cold-item
recall measures. Every dropped event or user is counted, never silently lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from qarm.errors import DataError
from qarm.lookup import IdIndex


@dataclass
class LooSplit:
    """Leave-one-out split over item rows (positions in items.parquet).

    ``train``: one int64 array per kept user (time order); ``valid_hist``/``test_hist``: the history each
    target is predicted from; ``valid_target``/``test_target`` int64 [U]; ``users`` int64 [U] user ids.
    """

    users: np.ndarray
    train: list[np.ndarray]
    valid_hist: list[np.ndarray]
    valid_target: np.ndarray
    test_hist: list[np.ndarray]
    test_target: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)


def leave_one_out(events: pd.DataFrame, item_ids: np.ndarray, holdout: np.ndarray, label: str = "",
                  file: str = "events.parquet") -> LooSplit:
    """Split ``events`` (user_id, item_id, timestamp, split[, label]) per user; see the module docstring.

    item_ids int64 [n_items] sorted (items.parquet order); holdout bool [n_items].
    """
    for col in ("user_id", "item_id", "timestamp"):
        if col not in events:
            raise DataError(f"missing column; columns present: {', '.join(map(str, events.columns))}",
                            file=file, column=col)
    keep = np.ones(len(events), bool)
    counts: dict[str, int] = {}
    if "split" in events:
        excluded = events["split"].to_numpy() == "cold_excluded"  # never used anywhere (data contract)
        counts["n_events_cold_excluded"] = int(excluded.sum())
        keep &= ~excluded
    if label:
        if label not in events:
            raise DataError(f"retrieve.label names a column the events do not have; columns: "
                            f"{', '.join(map(str, events.columns))}", file=file, column=label)
        pos = events[label].to_numpy() > 0
        counts["n_events_negative_label"] = int((keep & ~pos).sum())
        keep &= pos
    ev = events.loc[keep, ["user_id", "item_id", "timestamp"]]
    index = IdIndex(item_ids, assume_sorted=True)
    rows, found = index.find(ev["item_id"].to_numpy(np.int64))
    if not found.all():
        bad = int(np.flatnonzero(~found)[0])
        raise DataError(f"item_id {int(ev['item_id'].iloc[bad])} is not in items.parquet", file=file,
                        row=int(ev.index[bad]), column="item_id")
    user = ev["user_id"].to_numpy(np.int64)
    ts = ev["timestamp"].to_numpy(np.int64)
    order = np.lexsort((np.arange(len(ev)), ts, user))  # ties keep file order: deterministic
    user, rows = user[order], rows[order]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if len(user) else np.empty(0, np.int64)
    ends = np.r_[starts[1:], len(user)].astype(np.int64)
    users, train, vh, vt, th, tt = [], [], [], [], [], []
    short = dropped_holdout = 0
    for s, e in zip(starts, ends):
        seq = rows[s:e]
        if len(seq) < 3:
            short += 1
            continue
        target, before = seq[-1], seq[:-1]
        visible = before[~holdout[before]]
        dropped_holdout += len(before) - len(visible)
        if len(visible) < 2:
            short += 1
            continue
        users.append(user[s])
        train.append(visible[:-1])
        vh.append(visible[:-1])
        vt.append(visible[-1])
        th.append(visible)
        tt.append(target)
    counts.update(n_users=len(users), n_users_too_short=short, n_holdout_events_dropped=int(dropped_holdout),
                  n_train_interactions=int(sum(len(t) for t in train)))
    return LooSplit(np.asarray(users, np.int64), train, vh, np.asarray(vt, np.int64), th,
                    np.asarray(tt, np.int64), counts)


def windows(seqs: list[np.ndarray], length: int, per_seq: int = 0) -> list[np.ndarray]:
    """Training windows of at most ``length`` items cut from the end of each sequence.

    Consecutive windows overlap by one item, so every transition (item t -> item t+1) of a sequence
    is a training target exactly once; windows of one item (no transition) are dropped. ``per_seq`` > 0
    keeps only each sequence's last ``per_seq`` windows (1 = SASRec's recipe: the most recent items).
    """
    if length < 2:
        raise ValueError("a training window needs at least 2 items")
    out = []
    for seq in seqs:
        end, kept = len(seq), 0
        while end >= 2 and (per_seq <= 0 or kept < per_seq):
            kept += 1
            start = max(0, end - length)
            out.append(seq[start:end])
            end = start + 1
            if start == 0:
                break
    return out


def pad_right(seqs: list[np.ndarray], length: int, fill: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """int64 [n, length] with each sequence's last ``length`` entries left-aligned, and their lengths int64 [n]."""
    out = np.full((len(seqs), length), fill, np.int64)
    lens = np.zeros(len(seqs), np.int64)
    for i, s in enumerate(seqs):
        s = s[-length:]
        out[i, :len(s)] = s
        lens[i] = len(s)
    return out, lens
