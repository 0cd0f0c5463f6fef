"""Res-Kmeans-FSQ: the RQKMeans API (fit/transform/inverse/save/load), exact FSQ rounding, config switch."""

from __future__ import annotations

import numpy as np
import pytest

from qarm.config import load_config
from qarm.quant.checks import QuantizeError
from qarm.quant.fsq import ResKMeansFSQ, auto_fsq_levels, load_quantizer
from qarm.quant.metrics import rel_recon_errors, rq_metrics
from qarm.quant.rq import RQKMeans
from qarm.quant.stage import build_rq


def _emb(n=600, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * (rng.random(d) ** 2)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_auto_levels_keep_the_code_budget():
    assert auto_fsq_levels(32) == [4, 4, 2] and auto_fsq_levels(64) == [4, 4, 4] and auto_fsq_levels(12) == [4, 3]
    with pytest.raises(QuantizeError, match="rq_fsq_levels"):
        auto_fsq_levels(11)
    with pytest.raises(QuantizeError, match="product"):
        ResKMeansFSQ([8, 16], [4, 2]).fit(_emb())


def test_fit_transform_inverse_save_load(tmp_path):
    X = _emb()
    model = ResKMeansFSQ([8, 8, 16], fsq_epochs=60, seed=0)
    codes = model.fit_transform(X)
    assert codes.dtype == np.int32 and codes.shape == (len(X), 3)
    assert codes[:, 2].min() >= 0 and codes[:, 2].max() < 16 and len(np.unique(codes[:, 2])) > 8
    # the decoded grid is the last codebook: inverse = sum of centroids, and the metrics read it as RQ's
    assert model.codebooks_[-1].shape == (16, X.shape[1])
    recon = model.inverse_transform(codes)
    np.testing.assert_allclose(recon, sum(C[codes[:, i]] for i, C in enumerate(model.codebooks_)), atol=1e-6)
    errs = rel_recon_errors(X, codes, model.codebooks_)
    assert errs[2] < errs[1] < errs[0] < 1.0  # the FSQ level explains part of the residual
    m = rq_metrics(X, codes, model.codebooks_, model.sizes)
    assert 0 <= m["rq.collision_rate"] <= 1 and m["rq.levels"] == 3
    # FSQ's encoder is exact scalar rounding: re-deriving the last code from the residual by hand
    coarse = model.codebooks_[0][codes[:, 0]] + model.codebooks_[1][codes[:, 1]]
    z = (X - coarse) @ model.enc_w_ + model.enc_b_
    levels = model.levels_
    half = (levels - 1) * (1 + 1e-3) / 2
    off = np.where(levels % 2 == 0, 0.5, 0.0)
    digits = np.clip(np.round(np.tanh(z + np.arctanh(off / half)) * half - off) + levels // 2, 0, levels - 1)
    np.testing.assert_array_equal(np.ravel_multi_index(tuple(digits.astype(int).T), tuple(levels)), codes[:, 2])
    model.save(tmp_path)
    again = load_quantizer(tmp_path)
    assert isinstance(again, ResKMeansFSQ)
    np.testing.assert_array_equal(again.transform(X), codes)
    with pytest.raises(QuantizeError, match="level 3"):
        model.inverse_transform(np.array([[0, 0, 16]]))
    # same seed -> same codes; an RQ-Kmeans directory still loads as RQ-Kmeans
    np.testing.assert_array_equal(ResKMeansFSQ([8, 8, 16], fsq_epochs=60, seed=0).fit_transform(X), codes)
    RQKMeans([8, 8], seed=0).fit(X).save(tmp_path / "rq")
    assert isinstance(load_quantizer(tmp_path / "rq"), RQKMeans)


def test_quantize_config_switch_leaves_the_default_alone():
    default = load_config(None).quantize
    assert default.rq_method == "kmeans" and isinstance(build_rq(default, 0), RQKMeans)
    fsq = load_config(None, ["quantize.rq_method=fsq", "quantize.rq_sizes=[32,32,32]"]).quantize
    model = build_rq(fsq, 0)
    assert isinstance(model, ResKMeansFSQ) and model._levels().tolist() == [4, 4, 2]


def test_balanced_fsq_spreads_colliding_items_and_serves_the_same_codes(tmp_path):
    # tight clusters: plain FSQ rounds many items of one prefix onto one cell
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(12, 16))
    X = (centres[rng.integers(0, 12, 900)] + 0.05 * rng.normal(size=(900, 16))).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    plain = ResKMeansFSQ([8, 16], fsq_epochs=40, seed=0).fit(X)
    balanced = ResKMeansFSQ([8, 16], fsq_epochs=40, seed=0, balanced=True).fit(X)
    # the same k-means level and the same trained projection: only the prices differ
    np.testing.assert_array_equal(balanced.enc_w_, plain.enc_w_)
    c_plain, c_bal = plain.transform(X), balanced.transform(X)
    np.testing.assert_array_equal(c_bal[:, 0], c_plain[:, 0])
    assert balanced.price_keys_.size > 0 and plain.price_keys_.size == 0
    rate = {name: rq_metrics(X, c, m.codebooks_, m.sizes)["rq.collision_rate"]
            for name, c, m in (("plain", c_plain, plain), ("balanced", c_bal, balanced))}
    assert rate["balanced"] < rate["plain"]
    # prices are positive, so an item whose rounded cell carries none keeps it: the argmin of the
    # cell costs is the plain rounding
    untouched = ~np.isin(c_plain[:, 0].astype(np.int64) * 16 + c_plain[:, 1], balanced.price_keys_)
    assert 0 < untouched.sum() < len(X)
    np.testing.assert_array_equal(c_bal[untouched, 1], c_plain[untouched, 1])
    # an item's code is the same alone, in a small request and in the whole catalogue; save/load keeps it
    np.testing.assert_array_equal(np.concatenate([balanced.transform(X[i:i + 1]) for i in range(0, 900, 97)]),
                                  c_bal[::97])
    balanced.save(tmp_path)
    again = load_quantizer(tmp_path)
    assert again.balanced and again.get_params() == balanced.get_params()
    np.testing.assert_array_equal(again.transform(X), c_bal)
    cfg = load_config(None, ["quantize.rq_method=fsq", "quantize.rq_sizes=[8,16]", "quantize.rq_fsq_balanced=true"])
    assert build_rq(cfg.quantize, 0).balanced
