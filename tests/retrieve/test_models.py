"""The generative retriever, SASRec and popularity on tiny synthetic sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone

from qarm.retrieve.evaluate import recall_ndcg, retrieval_figures, target_ranks
from qarm.retrieve.model import CodeDecoder, GenerativeRetriever
from qarm.retrieve.popularity import PopularityRetriever
from qarm.retrieve.sasrec import SASRecRetriever

from retrieve_helpers import TINY, walk_data


def test_cached_decode_matches_full_forward():
    torch.manual_seed(0)
    net = CodeDecoder(vocab=12, n_levels=3, max_items=5, dim=16, layers=2, heads=2, dropout=0.0).eval()
    U, hist_items, T = 3, 4, 3
    tok = torch.randint(1, 12, (U, hist_items * T))
    lens = torch.tensor([4, 2, 3])
    idx = torch.arange(hist_items * T)
    valid = idx[None] < (lens * T)[:, None]
    tok = torch.where(valid, tok, 0)  # right padding
    _, cache = net(tok, (idx // T).expand(U, -1), (idx % T).expand(U, -1))
    gen = torch.randint(1, 12, (U, 2, 2))  # 2 beams, 2 generated tokens each
    out = net.decode(gen, lens[:, None, None], torch.arange(2), cache, valid)
    for u in range(U):
        for b in range(2):
            L = int(lens[u]) * T
            seq = torch.cat([tok[u, :L], gen[u, b]])[None]
            pos = torch.cat([idx[:L] // T, torch.full((2,), int(lens[u]))])[None]
            lvl = torch.cat([idx[:L] % T, torch.arange(2)])[None]
            full, _ = net(seq, pos, lvl)
            torch.testing.assert_close(out[u, b], full[0, -2:], rtol=1e-4, atol=1e-5)


def test_generative_retriever_learns_the_walk_and_returns_only_new_existing_items():
    codes, train, vh, vt, th, tt = walk_data()
    model = GenerativeRetriever(epochs=8, patience=0, **TINY).fit(codes, train, vh, vt)
    ranked = model.recommend(th, 10)
    assert ranked.shape == (len(th), 10)
    assert ranked.min() >= 0 and ranked.max() < len(codes)  # full lists of catalogue items
    for h, row in zip(th, ranked):
        assert not np.isin(row, h).any() and len(set(row.tolist())) == 10
    rec = recall_ndcg(target_ranks(ranked, tt), [10])["recall@10"]
    pop = PopularityRetriever().fit(len(codes), train)
    pop_rec = recall_ndcg(target_ranks(pop.recommend(th, 10), tt), [10])["recall@10"]
    assert rec > 0.6 and rec > pop_rec + 0.3, (rec, pop_rec)
    assert model.fit_log_.best_epoch >= 1 and len(model.fit_log_.log) == 8
    assert clone(model).get_params() == model.get_params()


def test_sasrec_learns_the_walk():
    codes, train, vh, vt, th, tt = walk_data()
    model = SASRecRetriever(epochs=8, patience=0, **TINY).fit(len(codes), train, vh, vt)
    ranked = model.recommend(th, 10)
    for h, row in zip(th, ranked):
        assert not np.isin(row, h).any()
    assert recall_ndcg(target_ranks(ranked, tt), [10])["recall@10"] > 0.6


@pytest.mark.parametrize("cls", [GenerativeRetriever, SASRecRetriever])
def test_resume_from_checkpoint_gives_the_same_weights(tmp_path, cls):
    codes, train, vh, vt, _, _ = walk_data(n_users=40)
    first = codes if cls is GenerativeRetriever else len(codes)
    params = dict(TINY, dropout=0.1)
    straight = cls(epochs=3, patience=0, **params).fit(first, train, vh, vt)
    ckpt = tmp_path / "ckpt.pt"
    cls(epochs=2, patience=0, **params).fit(first, train, vh, vt, checkpoint=ckpt)  # "killed" after epoch 2
    resumed = cls(epochs=3, patience=0, **params).fit(first, train, vh, vt, checkpoint=ckpt)
    assert resumed.fit_log_.resumed_from_epoch == 2 and resumed.fit_log_.epochs_run == 3
    for (k, a), (_, b) in zip(straight.net_.state_dict().items(), resumed.net_.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert straight.fit_log_.log == [dict(e, seconds=s["seconds"]) for e, s in
                                     zip(resumed.fit_log_.log, straight.fit_log_.log)]


def test_popularity_and_metrics():
    pop = PopularityRetriever().fit(5, [np.array([0, 1, 1]), np.array([1, 2, 2, 2])])
    np.testing.assert_array_equal(pop.order_[:3], [1, 2, 0])  # ties: lower row first
    np.testing.assert_array_equal(pop.recommend([np.array([2]), np.array([0, 1, 2, 3])], 3),
                                  [[1, 0, 3], [4, -1, -1]])
    ranked = np.array([[3, 1, 2], [0, 4, 5], [7, 8, 9]])
    ranks = target_ranks(ranked, np.array([1, 0, 1]))
    np.testing.assert_array_equal(ranks, [2, 1, 0])
    m = recall_ndcg(ranks, [1, 2])
    assert m["recall@1"] == pytest.approx(1 / 3) and m["recall@2"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 / np.log2(3) + 1) / 3)
    figs = retrieval_figures(np.pad(ranked, ((0, 0), (0, 7)), constant_values=-1), np.array([1, 0, 1]), [1],
                             cold=np.array([True, False, False]), buckets=np.array(["5-19", "0", "0"]))
    assert figs["cold_recall@10"] == 1.0 and figs["warm_recall@10"] == 0.5
    assert list(figs["recall@10_by_bucket"]) == ["0", "5-19"] and figs["recall_by_k"]["1"] == pytest.approx(1 / 3)
