"""Does an embedding agree with behaviour? Recall on held-out (valid) pairs, and business-cluster NMI.

Valid pairs are mined exactly as the pairs stage mines training pairs
(``qarm.pairs.triggers.mine_triggers``): for every valid-split positive, the trigger is, among the
user's latest ``window`` positives strictly before it (train and valid history, never test or
held-out), the item closest to the target in the U2I item embedding (``pairs/u2i_item_emb.npy``,
trained on the train split only). Recall@k: rank every catalogue item but the trigger by cosine to
the trigger; a hit when the target is in the top k.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from qarm.blocks import block_rows
from qarm.pairs.inputs import load_positives
from qarm.pairs.triggers import mine_triggers
from qarm.sample import sample_rows


def valid_pairs(items: pd.DataFrame, events: pd.DataFrame, u2i_emb: np.ndarray, label: str, window: int,
                items_file: str = "items.parquet", events_file: str = "events.parquet") -> tuple[np.ndarray, np.ndarray]:
    """(trigger rows, target rows) int64 [m] of valid-split positives, rows of items.parquet."""
    train = load_positives(items, events, label, "train", items_file, events_file)
    valid = load_positives(items, events, label, "valid", items_file, events_file)
    user = np.concatenate([train.user, valid.user])
    item = np.concatenate([train.item, valid.item])
    time = np.concatenate([train.time, valid.time])
    trig, targ, _, event = mine_triggers(user, item, time, u2i_emb, window, progress=False)
    is_valid = event >= len(train.user)
    return trig[is_valid], targ[is_valid]


def recall_at_k(emb: np.ndarray, trigger: np.ndarray, target: np.ndarray, ks=(10, 50),
                chunk: int = 2048) -> dict[int, float]:
    """emb float32 [n, d] L2-normalised; trigger, target int [m] rows. Returns {k: recall}."""
    if len(trigger) == 0:
        return {k: float("nan") for k in ks}
    hits = {k: 0 for k in ks}
    chunk = block_rows(len(emb), chunk)                         # memory O(cells), not O(chunk x items)
    for a in range(0, len(trigger), chunk):
        t, g = trigger[a:a + chunk], target[a:a + chunk]
        scores = emb[t] @ emb.T                                 # [c, n]
        scores[np.arange(len(t)), t] = -np.inf                  # never the trigger itself
        rank = (scores > scores[np.arange(len(t)), g][:, None]).sum(axis=1)
        for k in ks:
            hits[k] += int((rank < k).sum())
    return {k: hits[k] / len(trigger) for k in ks}


def business_agreement(emb: np.ndarray, business: np.ndarray, seed: int = 0, k: int = 10,
                       max_queries: int = 10_000, chunk: int = 2048) -> dict[str, float]:
    """NMI of k-means clusters (as many as business clusters) with the true business clusters, and
    precision@k: the share of each item's k nearest neighbours (by dot product, over every labelled
    item) in its business cluster.

    emb float32 [n, d]; business int [n] (rows with a negative label are ignored). Precision is
    averaged over at most ``max_queries`` query items (a seeded sample when there are more; all of
    them otherwise), scored ``chunk`` rows at a time, so memory is O(chunk * n), never O(n^2)."""
    keep = business >= 0
    x, y = emb[keep], business[keep]
    n_clusters = len(np.unique(y))
    labels = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit_predict(x)
    queries = sample_rows(len(x), max_queries, seed)
    kk = min(k, len(x) - 1)
    same = 0
    chunk = block_rows(len(x), chunk)
    for a in range(0, len(queries), chunk):
        q = queries[a:a + chunk]
        scores = x[q] @ x.T                                     # [c, n]
        scores[np.arange(len(q)), q] = -np.inf                  # never the item itself
        nn_idx = np.argpartition(-scores, kth=kk - 1, axis=1)[:, :k]
        same += int((y[nn_idx] == y[q][:, None]).sum())
    precision = same / (len(queries) * nn_idx.shape[1])
    return {"business_nmi": float(normalized_mutual_info_score(y, labels)), f"business_precision@{k}": precision}
