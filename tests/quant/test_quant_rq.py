"""RQ-Kmeans on clustered synthetic embeddings: determinism, quality, collisions, streaming, errors."""

from __future__ import annotations

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qarm.quant.checks import EmbeddingError, QuantizeError
from qarm.quant.metrics import collision_stats, level_usage, rel_recon_errors
from qarm.quant.parquet import code_parquet_catalogue
from qarm.quant.rq import RQKMeans
from qarm.quant.synthetic import clustered_embeddings


@pytest.fixture(scope="module")
def world():
    emb, _ = clustered_embeddings(6000, 32, n_clusters=120, seed=3)
    return emb


@pytest.fixture(scope="module")
def fitted(world):
    plain = RQKMeans([32, 32, 32], n_iter=15, balanced=False, seed=0).fit(world)
    balanced = RQKMeans([32, 32, 32], n_iter=15, balanced=True, seed=0).fit(world)
    return plain, balanced


def _mse(x, model, codes):
    return float(np.mean(np.sum((x - model.inverse_transform(codes)) ** 2, axis=1)))


def test_shapes_dtypes_and_per_level_error_falls(world, fitted):
    _, model = fitted
    codes = model.transform(world)
    assert codes.shape == (len(world), 3) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < 32
    recon = model.inverse_transform(codes)
    assert recon.shape == world.shape and recon.dtype == np.float32
    rel = rel_recon_errors(world, codes, model.codebooks_)
    assert rel[0] > rel[1] > rel[2] > 0 and rel[0] < 1
    util, perp = level_usage(codes, model.sizes)
    assert all(u >= 0.9 for u in util) and all(8 < p <= 32 for p in perp)


def test_deterministic_given_seed(world, fitted):
    _, model = fitted
    again = RQKMeans([32, 32, 32], n_iter=15, balanced=True, seed=0).fit(world)
    for a, b in zip(model.codebooks_, again.codebooks_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.price_keys_, again.price_keys_)
    np.testing.assert_array_equal(model.transform(world), again.transform(world))


def test_balanced_halves_collisions_at_bounded_error(world, fitted):
    plain, balanced = fitted
    c_plain, c_bal = plain.transform(world), balanced.transform(world)
    coll_plain = collision_stats(c_plain)["collision_rate"]
    coll_bal = collision_stats(c_bal)["collision_rate"]
    assert coll_plain > 0.3  # clustered data: plain residual k-means collides heavily
    assert coll_bal <= 0.5 * coll_plain
    assert _mse(world, balanced, c_bal) <= 1.05 * _mse(world, plain, c_plain)
    # the prices only ever move an item within the error budget of its nearest last-level code
    assert balanced.price_values_.max() <= balanced.balance_budget * _mse(world, plain, c_plain) * 1.5


def test_refined_codebooks_beat_plain_faiss_per_level(world, fitted):
    plain, _ = fitted
    r = world.copy()
    for level in range(3):  # the reference: one faiss.Kmeans per level, as public semantic-ID tokenizers do
        km = faiss.Kmeans(world.shape[1], 32, niter=15, seed=level)
        km.train(r)
        r -= km.centroids[km.index.search(r, 1)[1].ravel()]
    ref_mse = float(np.mean(np.sum(r ** 2, axis=1)))
    assert _mse(world, plain, plain.transform(world)) <= 1.01 * ref_mse


def test_same_item_same_code_whatever_the_batch(world, fitted):
    _, model = fitted
    full = model.transform(world[:600])
    singles = np.concatenate([model.transform(world[i:i + 1]) for i in range(0, 600, 7)])
    np.testing.assert_array_equal(singles, full[::7])
    small = RQKMeans(**{**model.get_params(), "chunk_size": 37})
    small.dim_, small.codebooks_ = model.dim_, model.codebooks_
    small.price_keys_, small.price_values_ = model.price_keys_, model.price_values_
    np.testing.assert_array_equal(small.transform(world[:600]), full)


def test_save_load_and_parquet_stream(tmp_path, world, fitted):
    _, model = fitted
    model.save(tmp_path / "q")
    loaded = RQKMeans.load(tmp_path / "q")
    expected = model.transform(world)
    np.testing.assert_array_equal(loaded.transform(world), expected)
    path = tmp_path / "emb.parquet"
    values = pa.array(world.ravel())
    offsets = pa.array(np.arange(0, world.size + 1, world.shape[1], dtype=np.int32))
    pq.write_table(pa.table({"item_id": np.arange(len(world)), "embedding": pa.ListArray.from_arrays(offsets, values)}),
                   path, row_group_size=1000)
    np.testing.assert_array_equal(loaded.transform_parquet(path, batch_rows=777), expected)
    out = tmp_path / "codes.parquet"
    assert code_parquet_catalogue(loaded, path, out, batch_rows=1000) == len(world)
    coded = pq.read_table(out).to_pandas()
    np.testing.assert_array_equal(np.stack(coded["rq"].to_numpy()), expected)
    np.testing.assert_array_equal(coded["item_id"].to_numpy(), np.arange(len(world)))


def test_clear_errors(world, fitted):
    _, model = fitted
    bad = world[:50].copy()
    bad[[3, 17], 5] = np.nan
    bad[9, 0] = np.inf
    with pytest.raises(EmbeddingError, match=r"rows 3, 9, 17"):
        model.transform(bad)
    with pytest.raises(EmbeddingError, match="dimension mismatch: expected 32"):
        model.transform(np.ones((4, 31), np.float32))
    with pytest.raises(QuantizeError, match="cannot fit 64 clusters on 40 points"):
        RQKMeans([64], balanced=False).fit(world[:40])
    with pytest.raises(QuantizeError, match=r"level 2 codes must lie in \[0, 32\)"):
        model.inverse_transform(np.array([[0, 32, 0]]))
    with pytest.raises(QuantizeError, match="not fitted"):
        RQKMeans([4]).transform(world[:3])


def _straightforward_codes(model: RQKMeans, x: np.ndarray) -> np.ndarray:
    """The transform as first written: the whole batch's augmented GEMM per level, every price added
    to every row (sparse scatter), argmin, residual update on every level."""
    from qarm.quant.balance import add_prices

    r_aug = np.hstack([x, np.ones((len(x), 1), np.float32)])
    r = r_aug[:, :-1]
    codes = np.empty((len(x), len(model.sizes)), np.int32)
    for level, C in enumerate(model.codebooks_):
        mat = np.vstack([-2.0 * C.T, np.einsum("ij,ij->i", C, C)[None, :]]).astype(np.float32)
        sc = r_aug @ mat
        if level == len(model.sizes) - 1 and model.price_keys_.size:
            add_prices(sc, model._prefix(codes[:, :level]), model.price_keys_, model.price_values_, model.sizes[-1])
        codes[:, level] = sc.argmin(axis=1)
        r -= C[codes[:, level]]
    return codes


def test_fast_transform_equals_the_straightforward_one(world, fitted):
    """Dense price rows, priced argmin and the skipped last residual change no code (same float32 sums)."""
    from qarm.quant.rq import _Plan

    plain, balanced = fitted
    assert balanced.price_keys_.size > 100  # the fixture exercises the prices
    for model in (plain, balanced):
        expected = _straightforward_codes(model, world)
        np.testing.assert_array_equal(model.transform(world), expected)
        for n_threads in (1, 2):
            again = RQKMeans(**{**model.get_params(), "n_threads": n_threads, "chunk_size": 1000})
            again.dim_, again.codebooks_ = model.dim_, model.codebooks_
            again.price_keys_, again.price_values_ = model.price_keys_, model.price_values_
            np.testing.assert_array_equal(again.transform(world), expected)
    # both price paths: dense rows (a catalogue) and the sparse table (a request too small for the rows)
    dense = _Plan(balanced.codebooks_, balanced.price_keys_, balanced.price_values_, len(world))
    sparse = _Plan(balanced.codebooks_, balanced.price_keys_, balanced.price_values_, len(world), max_table_bytes=0)
    assert dense.price_rows is not None and sparse.price_rows is None
    for plan in (dense, sparse):
        codes, _ = balanced._encode_chunk(world, 3, prices=True, plan=plan, residual=False)
        np.testing.assert_array_equal(codes, _straightforward_codes(balanced, world))


def test_one_item_alone_gets_its_catalogue_code(world, fitted):
    """A one-row product must not take BLAS's matrix-vector path (another summation order)."""
    _, model = fitted
    full = model.transform(world)
    rows = np.random.default_rng(0).choice(len(world), 60, replace=False)
    np.testing.assert_array_equal(np.concatenate([model.transform(world[i:i + 1]) for i in rows]), full[rows])
    for size in (2, 3, 200):
        subset = np.sort(np.random.default_rng(size).choice(len(world), size, replace=False))
        np.testing.assert_array_equal(model.transform(world[subset]), full[subset])
