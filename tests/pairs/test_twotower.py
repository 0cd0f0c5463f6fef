"""U2I two-tower: learns planted co-preference, is deterministic, resumes from its checkpoint."""

import numpy as np
from qarm.pairs.twotower import U2IRetriever, recall_at_k


def clustered_log(n_users=300, n_items=120, per_user=20, n_clusters=6, seed=0):
    """Each user clicks items of one cluster (cluster = item % n_clusters), in time order."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    cluster = users % n_clusters
    item = cluster + n_clusters * rng.integers(0, n_items // n_clusters, len(users))
    time = np.tile(np.arange(per_user), n_users)
    return users, item, time


def test_learns_clusters_and_beats_popularity():
    user, item, time = clustered_log()
    m = U2IRetriever(120, dim=16, history=10, epochs=4, batch_size=256, lr=0.01, progress=False).fit(user, item, time)
    emb = m.item_embeddings()
    assert emb.shape == (120, 16) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    sims = emb @ emb.T
    same = (np.arange(120)[:, None] % 6) == (np.arange(120)[None, :] % 6)
    assert sims[same].mean() > sims[~same].mean() + 0.3
    # next item of each user is any item of its cluster: recall@20 of a 120-item catalogue
    users = np.arange(300)
    targets = users % 6 + 6 * np.random.default_rng(1).integers(0, 20, 300)
    hist = item.reshape(300, 20)[:, -10:]
    seen = [np.zeros(0, dtype=np.int64)] * 300
    model = recall_at_k(m.user_embeddings(users, hist) @ emb.T, targets, seen, (20,))[20]
    pop = recall_at_k(np.tile(m.item_counts_.astype(np.float32), (300, 1)), targets, seen, (20,))[20]
    assert model > 0.6 and model > pop + 0.3


def test_never_positive_items_get_zero_rows_and_unknown_users_work():
    user, item, time = clustered_log(n_users=50, n_items=60)
    m = U2IRetriever(70, dim=8, history=5, epochs=1, progress=False).fit(user, item, time)
    emb = m.item_embeddings()
    assert np.abs(emb[60:]).sum() == 0
    out = m.user_embeddings(np.array([10_000]), np.full((1, 5), -1))
    assert out.shape == (1, 8) and np.isfinite(out).all()


def test_deterministic_and_resumes_from_checkpoint(tmp_path):
    user, item, time = clustered_log(n_users=80, n_items=60)
    kw = dict(dim=8, history=5, batch_size=128, seed=3, progress=False)
    full = U2IRetriever(60, epochs=3, **kw).fit(user, item, time)
    again = U2IRetriever(60, epochs=3, **kw).fit(user, item, time)
    np.testing.assert_array_equal(full.item_embeddings(), again.item_embeddings())
    ckpt = tmp_path / "u2i.pt"
    U2IRetriever(60, epochs=2, **kw).fit(user, item, time, checkpoint=ckpt, checkpoint_key="k")
    resumed = U2IRetriever(60, epochs=3, **kw).fit(user, item, time, checkpoint=ckpt, checkpoint_key="k")
    np.testing.assert_allclose(resumed.item_embeddings(), full.item_embeddings(), atol=1e-6)
    assert len(resumed.loss_history_) == 3
    # a different key (other config or data) starts afresh
    fresh = U2IRetriever(60, epochs=1, **kw).fit(user, item, time, checkpoint=ckpt, checkpoint_key="other")
    assert fresh.epochs_done_ == 1 and len(fresh.loss_history_) == 1


def test_sklearn_clone_params_untouched_and_validated_in_fit():
    import pytest
    from sklearn.base import clone

    from qarm.errors import ConfigError

    est = U2IRetriever(60, dim=8, history=5, epochs=1, user_dropout=0.1, n_negatives=16, neg_alpha=0.5,
                       device="cpu", seed=4, progress=False)
    twin = clone(est)
    assert twin is not est and twin.get_params() == est.get_params()
    assert not [k for k in vars(twin) if k.endswith("_")]            # nothing learned before fit
    user, item, time = clustered_log(n_users=40, n_items=60)
    np.testing.assert_array_equal(twin.fit(user, item, time).item_embeddings(), est.fit(user, item, time).item_embeddings())
    assert clone(est).get_params() == est.get_params()                # a fitted estimator clones to an unfitted one
    assert not hasattr(clone(est), "model_")
    # bad values are stored untouched (clone must not fail) and rejected by fit, naming the parameter
    for bad, match in ((dict(temperature=0.0), "u2i_temperature"), (dict(pooling="max"), "u2i_pooling"),
                       (dict(user_dropout=1.0), "u2i_user_dropout"), (dict(device="tpu"), "pairs.device"),
                       (dict(history=0), "u2i_history")):
        unfit = clone(U2IRetriever(60, **bad))
        with pytest.raises(ConfigError, match=match):
            unfit.fit(user, item, time)


def test_device_cpu_and_cuda_without_gpu():
    import pytest
    import torch

    from qarm.errors import ConfigError

    user, item, time = clustered_log(n_users=30, n_items=60)
    m = U2IRetriever(60, dim=8, history=5, epochs=1, device="auto", progress=False).fit(user, item, time)
    expect = "cuda" if torch.cuda.is_available() else "cpu"
    assert m.device_.type == expect and next(m.model_.parameters()).device.type == expect
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            U2IRetriever(60, dim=8, epochs=1, device="cuda:0", progress=False).fit(user, item, time)


def test_mixed_negatives_user_dropout_and_bias_train_and_score():
    user, item, time = clustered_log()
    m = U2IRetriever(120, dim=16, history=10, epochs=3, batch_size=256, lr=0.01, n_negatives=64, neg_alpha=0.5,
                     user_dropout=0.2, progress=False).fit(user, item, time)
    assert m.loss_history_[-1] < m.loss_history_[0]
    score = m.scorer()
    hist = item.reshape(300, 20)[:, -10:]
    s = score(np.arange(300), hist)
    assert s.shape == (300, 120) and s.dtype == np.float32 and np.isfinite(s).all()
    # the unknown-user row was trained by the dropout: a new user still ranks its history's cluster first
    new = score(np.full(6, 10_000), hist[:6])
    assert (new.argmax(axis=1) % 6 == np.arange(6) % 6).all()
    # items never positive in training are ranked last
    m2 = U2IRetriever(130, dim=8, history=5, epochs=1, progress=False).fit(user, item, time)
    assert np.isneginf(m2.scorer()(np.arange(3), hist[:3, -5:])[:, 120:]).all()


def test_sparse_row_wise_adam_learns_touches_only_batch_rows_and_resumes(tmp_path):
    """u2i_sparse: the id tables get SparseAdam (only rows a batch used change), the model still learns."""
    import pytest

    from qarm.errors import ConfigError

    user, item, time = clustered_log()
    m = U2IRetriever(130, dim=16, history=10, epochs=4, batch_size=256, lr=0.01, sparse=True,
                     progress=False).fit(user, item, time)
    assert m.model_.item_emb.sparse and m.model_.user_emb.sparse
    emb = m.item_embeddings()
    sims = emb[:120] @ emb[:120].T
    same = (np.arange(120)[:, None] % 6) == (np.arange(120)[None, :] % 6)
    assert sims[same].mean() > sims[~same].mean() + 0.3
    # items 120..129 never occur: row-wise Adam never moved their (random, seeded) initial rows,
    # while every item that occurs did move
    untrained = U2IRetriever(130, dim=16, history=10, epochs=0, sparse=True, progress=False).fit(user, item, time)
    before, after = (e.model_.item_emb.weight.detach().numpy() for e in (untrained, m))
    np.testing.assert_array_equal(after[120:130], before[120:130])
    assert (np.abs(after[:120] - before[:120]).max(axis=1) > 0).all()
    # resume from the joint optimizer's checkpoint = an uninterrupted run
    kw = dict(dim=8, history=5, batch_size=128, seed=3, sparse=True, progress=False)
    small = clustered_log(n_users=80, n_items=60)
    full = U2IRetriever(60, epochs=3, **kw).fit(*small)
    U2IRetriever(60, epochs=2, **kw).fit(*small, checkpoint=tmp_path / "u.pt", checkpoint_key="k")
    resumed = U2IRetriever(60, epochs=3, **kw).fit(*small, checkpoint=tmp_path / "u.pt", checkpoint_key="k")
    np.testing.assert_allclose(resumed.item_embeddings(), full.item_embeddings(), atol=1e-6)
    with pytest.raises(ConfigError, match="u2i_weight_decay"):
        U2IRetriever(60, weight_decay=0.1, sparse=True, progress=False).fit(*small)
