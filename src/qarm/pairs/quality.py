"""Do the mined pairs carry the business signal? Agreement with ground-truth item clusters.

On the synthetic world every item has a latent content ``topic`` (drives its text, image, audio)
and a latent ``business`` cluster (drives behaviour); they agree only for a share of items. A pair
miner that reads behaviour should pair items of the same business cluster far more often than
random pairs, and more often than nearest neighbours in a raw content space, which follow topics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from qarm.blocks import block_rows
from qarm.sample import sample_rows


def same_cluster_rate(a: np.ndarray, b: np.ndarray, cluster_of: pd.Series) -> float:
    """Share of pairs (a[k], b[k]) (item ids) whose items share ``cluster_of`` (item_id -> label)."""
    if len(a) == 0:
        return float("nan")
    ca = cluster_of.reindex(a).to_numpy()
    cb = cluster_of.reindex(b).to_numpy()
    return float(np.mean(ca == cb))


def random_pairs(item_ids: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uniformly random pairs of distinct items from ``item_ids``."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(item_ids), n)
    b = (a + rng.integers(1, len(item_ids), n)) % len(item_ids)  # never a == b
    return item_ids[a], item_ids[b]


def tfidf_nearest_pairs(items: pd.DataFrame, item_ids: np.ndarray, batch: int = 2048, max_queries: int = 0,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each item of ``item_ids`` (or of a seeded sample of ``max_queries`` of them, when > 0: each
    query costs O(len(item_ids))) paired with its cosine-nearest other item of ``item_ids`` in the
    TF-IDF space of items.parquet ``text`` (the raw content space; no alignment involved)."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # slow import, synthetic runs only

    text = items.set_index("item_id").loc[item_ids, "text"].fillna("").astype(str).to_numpy()
    X = TfidfVectorizer(sublinear_tf=True).fit_transform(text)  # rows L2-normalised
    X = sp.csr_matrix(X)
    queries = sample_rows(len(item_ids), max_queries, seed)
    nearest = np.empty(len(queries), dtype=np.int64)
    # a block's dense [b, items] similarities stay O(cells): 2,048 rows over 1M items were 16 GiB
    batch = block_rows(len(item_ids), batch)
    for start in range(0, len(queries), batch):
        q = queries[start:start + batch]
        sims = (X[q] @ X.T).toarray()
        sims[np.arange(len(q)), q] = -np.inf
        nearest[start:start + batch] = sims.argmax(axis=1)
    return item_ids[queries], item_ids[nearest]


def business_agreement(pairs: pd.DataFrame, items: pd.DataFrame, truth: pd.DataFrame, seed: int,
                       max_content_queries: int = 10_000) -> dict:
    """same_business_cluster (and same_topic) of mined, random and content-NN pairs.

    pairs: the pairs.parquet table; truth: ground_truth.parquet (item_id, topic, business).
    Random and content-NN pairs are drawn over the items the mined pairs touch, so all three
    describe the same items.
    """
    truth = truth.set_index("item_id")
    a, b = pairs["trigger_id"].to_numpy(), pairs["target_id"].to_numpy()
    support = np.unique(np.concatenate([a, b]))
    ra, rb = random_pairs(support, max(len(pairs), 10_000), seed)
    ca, cb = (tfidf_nearest_pairs(items, support, max_queries=max_content_queries, seed=seed)
              if len(support) > 1 else (support, support))
    out = {}
    for key, col in (("same_business_cluster", "business"), ("same_topic", "topic")):
        if col not in truth.columns:
            continue
        out[key] = {
            "mined": same_cluster_rate(a, b, truth[col]),
            "random": same_cluster_rate(ra, rb, truth[col]),
            "content_nn": same_cluster_rate(ca, cb, truth[col]),
            **{src: same_cluster_rate(g["trigger_id"].to_numpy(), g["target_id"].to_numpy(), truth[col])
               for src, g in pairs.groupby("source")},
        }
    out["content_space"] = "TF-IDF of items.parquet text (raw content, no alignment)"
    return out
