"""VQ top-K codes: exactness against brute force, self exclusion, pools, approximate recall, errors."""

from __future__ import annotations

import numpy as np
import pytest

from qarm.quant.checks import EmbeddingError, QuantizeError
from qarm.quant.synthetic import clustered_embeddings
from qarm.quant.vq import VQCoder


@pytest.fixture(scope="module")
def world():
    emb, _ = clustered_embeddings(1500, 24, n_clusters=40, seed=7)
    ids = np.arange(1500, dtype=np.int64) * 3 + 11  # ids are not row numbers
    return emb, ids


def test_flat_cosine_matches_brute_force_and_excludes_self(world):
    emb, ids = world
    vq = VQCoder(10, metric="cosine", index="flat").fit(emb, ids)
    codes = vq.transform(emb, item_ids=ids)
    assert codes.shape == (1500, 10) and codes.dtype == np.int32
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    agree = (np.sort(codes, 1) == np.sort(expected, 1)).all(1).mean()
    assert agree > 0.99  # float ties aside, exactly the brute-force neighbours
    assert not (codes == np.arange(1500)[:, None]).any()
    np.testing.assert_array_equal(vq.pool_ids_[codes[:, 0]], ids[expected[:, 0]])
    # a new item (id not in the pool) keeps its own nearest neighbour
    fresh = vq.transform(emb[:5])
    np.testing.assert_array_equal(fresh[:, 0], np.arange(5))


def test_pools_popular_and_random(world):
    emb, ids = world
    popularity = np.random.default_rng(0).integers(0, 1000, size=len(ids))
    vq = VQCoder(5, pool="popular", pool_size=100).fit(emb, ids, popularity)
    np.testing.assert_array_equal(vq.pool_ids_, np.sort(ids[np.lexsort((ids, -popularity))[:100]]))
    assert np.all(np.diff(vq.pool_ids_) > 0)
    a = VQCoder(5, pool="random", pool_size=200, seed=4).fit(emb, ids)
    b = VQCoder(5, pool="random", pool_size=200, seed=4).fit(emb, ids)
    np.testing.assert_array_equal(a.pool_ids_, b.pool_ids_)
    codes = a.transform(emb, item_ids=ids)
    assert codes.max() < 200


def test_hnsw_and_ivf_recall_against_exact(world):
    emb, ids = world
    exact = VQCoder(10, index="flat").fit(emb, ids).transform(emb, item_ids=ids)
    for kind in ("hnsw", "ivf"):
        approx = VQCoder(10, index=kind, nprobe=8).fit(emb, ids).transform(emb, item_ids=ids)
        recall = np.mean([len(np.intersect1d(x, y)) / 10 for x, y in zip(exact, approx)])
        assert recall > 0.9, kind


def test_save_load_roundtrip_and_overlap(tmp_path, world):
    emb, ids = world
    vq = VQCoder(8, metric="l2", index="hnsw").fit(emb, ids)
    codes = vq.transform(emb, item_ids=ids)
    vq.save(tmp_path)
    loaded = VQCoder.load(tmp_path)
    np.testing.assert_array_equal(loaded.transform(emb, item_ids=ids), codes)
    overlap = vq.neighbor_overlap(codes, ids)
    assert 0.2 < overlap < 1.0  # neighbours share part of their neighbourhoods, clustered data


def test_clear_errors(world):
    emb, ids = world
    with pytest.raises(QuantizeError, match="vq_k=25 needs a pool of at least 26 items"):
        VQCoder(25).fit(emb[:20], ids[:20])
    zero = emb[:30].copy()
    zero[[4, 8]] = 0
    with pytest.raises(EmbeddingError, match=r"zero vectors.*rows 4, 8 \(item_id 23, 35\)"):
        VQCoder(5).fit(zero, ids[:30])
    vq = VQCoder(5).fit(emb, ids)
    with pytest.raises(EmbeddingError, match="dimension mismatch: expected 24 .*got 12"):
        vq.transform(emb[:, :12])
