"""Batch invariance of the code transform: an embedding's codes never depend on the rows coded with it."""

from __future__ import annotations

import numpy as np

from qarm.quant.rq import GEMM_ROWS, RQKMeans, fixed_rows_matmul


def test_fixed_rows_matmul_rows_are_independent_of_the_call():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2 * GEMM_ROWS + 37, 65)).astype(np.float32)
    b = rng.standard_normal((65, 48)).astype(np.float32)
    full = fixed_rows_matmul(a, b)
    np.testing.assert_allclose(full, a @ b, rtol=1e-4, atol=1e-4)  # it is the product
    for size in (1, 7, 200, GEMM_ROWS + 3):
        rows = np.sort(rng.choice(len(a), size, replace=False))
        assert np.array_equal(fixed_rows_matmul(a[rows], b), full[rows]), size


def test_rq_codes_of_a_subset_equal_the_catalogue_codes():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for balanced in (True, False):
        rq = RQKMeans([16, 16, 16], n_iter=5, balanced=balanced, seed=0).fit(x)
        full = rq.transform(x)
        for size in (1, 7, 200):
            rows = np.sort(rng.choice(len(x), size, replace=False))
            assert np.array_equal(rq.transform(x[rows]), full[rows]), (balanced, size)
