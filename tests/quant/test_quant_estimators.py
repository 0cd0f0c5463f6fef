"""Estimator conventions of the quantisers and the quant package's layering (issue 14, item 6)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import clone

from qarm.quant.checks import QuantizeError
from qarm.quant.rq import RQKMeans
from qarm.quant.synthetic import clustered_embeddings
from qarm.quant.vq import VQCoder


@pytest.fixture(scope="module")
def emb():
    return clustered_embeddings(800, 16, n_clusters=20, seed=5)[0]


def test_rqkmeans_clone_keeps_params_untouched_and_refits_identically(emb):
    sizes = (8, 8)  # a tuple stays a tuple: __init__ stores what it is given
    model = RQKMeans(sizes, n_iter=5, balance_rounds=4, chunk_size=100, seed=3)
    assert model.sizes is sizes and model.get_params()["sizes"] is sizes
    model.fit(emb)
    copy = clone(model)
    assert not hasattr(copy, "codebooks_")  # a clone is unfitted
    assert copy.get_params() == model.get_params()
    np.testing.assert_array_equal(copy.fit(emb).transform(emb), model.transform(emb))
    assert model.set_params(seed=4).seed == 4
    with pytest.raises(ValueError, match="invalid parameter 'sized'"):
        model.set_params(sized=[4])


@pytest.mark.parametrize("params, message", [
    ({"sizes": []}, "rq_sizes must be a non-empty list"),
    ({"sizes": [8, 0]}, "rq_sizes must be a non-empty list"),
    ({"sizes": [8], "init": "kmeans||"}, "rq_init must be kmeans\\+\\+ or random"),
    ({"sizes": [8], "n_iter": 0}, "rq_iters must be an integer >= 1"),
    ({"sizes": [8], "chunk_size": 0}, "rq_chunk_size must be an integer >= 1"),
    ({"sizes": [8], "balance_budget": -1.0}, "rq_balance_budget must be >= 0"),
])
def test_rqkmeans_validates_in_fit_not_init(emb, params, message):
    model = RQKMeans(**params)  # constructing never fails: clone and set_params must be able to build it
    with pytest.raises(QuantizeError, match=message):
        model.fit(emb)


def test_vqcoder_clone_and_validation(emb):
    ids = np.arange(100, 100 + len(emb), dtype=np.int64)
    coder = VQCoder(5, index="hnsw", hnsw_m=8, seed=1).fit(emb, ids)
    copy = clone(coder)
    assert not hasattr(copy, "index_") and copy.get_params() == coder.get_params()
    np.testing.assert_array_equal(copy.fit(emb, ids).transform(emb, item_ids=ids), coder.transform(emb, item_ids=ids))
    for params, message in [({"pool": "best"}, "vq_pool must be all, popular or random"),
                            ({"metric": "dot"}, "vq_metric must be cosine or l2"),
                            ({"index": "pq"}, "vq_index must be flat, hnsw or ivf"),
                            ({"k": 0}, "vq_k must be an integer >= 1")]:
        with pytest.raises(QuantizeError, match=message):
            VQCoder(**params).fit(emb, ids)


def test_quant_modules_import_without_a_cycle():
    """The codes schema lives below the estimators and the stage: the Parquet streamer and RQ-Kmeans load
    without the stage, and the schema module loads without any estimator."""
    code = ("import sys; import qarm.quant.schema; assert 'qarm.quant.rq' not in sys.modules; "
            "import qarm.quant.parquet; assert 'qarm.quant.stage' not in sys.modules; "
            "import qarm.quant.rq; assert 'qarm.quant.stage' not in sys.modules; "
            "from qarm.quant.stage import codes_table; from qarm.quant.schema import codes_table as c2; "
            "assert codes_table is c2")
    subprocess.run([sys.executable, "-c", code], check=True)
