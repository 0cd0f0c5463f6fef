"""Contrastive loss (masking, weights), fusion (placeholders, modality dropout), trainer (learning, resume)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from qarm.align.evaluate import recall_at_k
from qarm.align.inputs import ItemStore, raw_embedding
from qarm.align.model import AlignModel, Fusion
from qarm.align.train import AlignTrainer, contrastive_loss, embed_rows


def reference_loss(q, k, q_ids, k_ids, w, scale):
    """Per-row loop: each direction's softmax over the columns that are true negatives or the positive."""
    total = 0.0
    for i in range(len(q)):
        for a, b, a_ids, b_ids in ((q, k, q_ids, k_ids), (k, q, k_ids, q_ids)):
            cols = [j for j in range(len(q)) if j == i or (b_ids[j] != b_ids[i] and b_ids[j] != a_ids[i])]
            logits = torch.stack([a[i] @ b[j] * scale for j in cols])
            total += 0.5 * w[i] * -F.log_softmax(logits, 0)[cols.index(i)]
    return total


def test_loss_matches_reference_with_false_negatives_masked():
    torch.manual_seed(0)
    q, k = F.normalize(torch.randn(6, 8), dim=1), F.normalize(torch.randn(6, 8), dim=1)
    q_ids = torch.tensor([1, 2, 3, 4, 5, 9])
    k_ids = torch.tensor([7, 7, 8, 1, 6, 3])  # target 7 twice; item 1 is a trigger and a target; 3 likewise
    w = torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0, 1.0])
    got, wsum = contrastive_loss(q, k, q_ids, k_ids, w, torch.tensor(10.0), slice(0, 6))
    assert torch.allclose(got, reference_loss(q, k, q_ids, k_ids, w, 10.0), atol=1e-5)
    assert float(wsum) == float(w.sum())
    # the loss of rows 0..2 plus rows 3..5 is the loss of all rows (how DDP ranks split a batch)
    a, _ = contrastive_loss(q, k, q_ids, k_ids, w, torch.tensor(10.0), slice(0, 3))
    b, _ = contrastive_loss(q, k, q_ids, k_ids, w, torch.tensor(10.0), slice(3, 6))
    assert torch.allclose(a + b, got, atol=1e-5)


def test_fusion_placeholder_and_modality_dropout():
    torch.manual_seed(0)
    fusion = Fusion({"text": 8, "image": 4}, hidden=16, dim=6, kind="mlp", modality_dropout=0.9)
    feats = {"text": torch.randn(5, 8), "image": torch.randn(5, 4)}
    present = torch.tensor([[True, True], [True, False], [False, True], [False, False], [True, True]])
    fusion.eval()
    out = fusion(feats, present)
    assert out.shape == (5, 6) and torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)
    changed = {"text": feats["text"].clone(), "image": torch.randn(5, 4)}  # new images: only present ones matter
    out2 = fusion(changed, present)
    assert torch.allclose(out[1], out2[1]) and torch.allclose(out[3], out2[3])  # image absent: placeholder
    assert not torch.allclose(out[0], out2[0])
    fusion.train()  # with dropout 0.9 most modalities are hidden, but never all of an item's
    seen = torch.stack([fusion(feats, present) for _ in range(20)])
    assert torch.isfinite(seen).all()
    transformer = Fusion({"text": 8, "image": 4, "audio": 3}, hidden=16, dim=6, kind="transformer").eval()
    out3 = transformer({**feats, "audio": torch.randn(5, 3)}, torch.ones(5, 3, dtype=torch.bool))
    assert out3.shape == (5, 6)


def toy_store(n: int = 240, clusters: int = 12, seed: int = 0):
    """Items whose features mix a content signal with a hidden behaviour cluster (weakly visible)."""
    rng = np.random.default_rng(seed)
    business = rng.integers(0, clusters, n)
    centres = rng.normal(size=(clusters, 16))
    text = rng.normal(size=(n, 32)).astype(np.float32)
    text[:, :16] += 0.6 * centres[business]
    image = rng.normal(size=(n, 24)).astype(np.float32)
    present = np.ones((n, 2), dtype=bool)
    present[::7, 1] = False
    store = ItemStore(["text", "image"], present, feats={"text": text, "image": image})
    store.raw = raw_embedding(store)
    pairs = [(a, b) for a in range(n) for b in rng.choice(np.flatnonzero(business == business[a]), 4) if a != b]
    pairs = np.array(pairs)
    return store, business, pairs


def _model(store, dim=16):
    torch.manual_seed(0)
    return AlignModel({"text": 32, "image": 24}, {}, hidden=32, dim=dim, modality_dropout=0.1)


def test_trainer_learns_behaviour_clusters():
    store, business, pairs = toy_store()
    rng = np.random.default_rng(1)
    test = np.flatnonzero(rng.random(len(pairs)) < 0.2)
    train = np.setdiff1d(np.arange(len(pairs)), test)
    model = _model(store)
    trainer = AlignTrainer(epochs=15, batch_size=64, lr=3e-3, seed=0, progress=False)
    trainer.fit(model, store, pairs[train, 0], pairs[train, 1], np.ones(len(train), np.float32), np.arange(len(store)))
    assert trainer.loss_history_[-1] < trainer.loss_history_[0] - 0.3
    aligned = embed_rows(model, store)
    raw = recall_at_k(store.raw, pairs[test, 0], pairs[test, 1], (10,))[10]
    ours = recall_at_k(aligned, pairs[test, 0], pairs[test, 1], (10,))[10]
    assert ours > raw + 0.1, (raw, ours)


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    store, _, pairs = toy_store(n=120)
    w = np.ones(len(pairs), np.float32)
    ids = np.arange(len(store))
    full = _model(store)
    AlignTrainer(epochs=4, batch_size=64, seed=3, progress=False).fit(full, store, pairs[:, 0], pairs[:, 1], w, ids)
    ckpt = tmp_path / "ckpt.pt"
    part = _model(store)
    AlignTrainer(epochs=2, batch_size=64, seed=3, progress=False).fit(part, store, pairs[:, 0], pairs[:, 1], w, ids,
                                                                      checkpoint=ckpt, checkpoint_key="k")
    resumed = _model(store)
    t = AlignTrainer(epochs=4, batch_size=64, seed=3, progress=False).fit(resumed, store, pairs[:, 0], pairs[:, 1], w,
                                                                          ids, checkpoint=ckpt, checkpoint_key="k")
    assert t.epochs_run_ == 2 and len(t.loss_history_) == 4
    np.testing.assert_allclose(embed_rows(resumed, store), embed_rows(full, store), atol=1e-6)
    other = _model(store)  # a checkpoint with another key (other config or data) is not resumed
    t2 = AlignTrainer(epochs=1, batch_size=64, seed=3, progress=False).fit(other, store, pairs[:, 0], pairs[:, 1], w,
                                                                           ids, checkpoint=ckpt, checkpoint_key="x")
    assert t2.epochs_run_ == 1


def test_business_agreement_blocked_matches_a_full_pairwise_reference():
    """Chunked neighbour search = the full n x n reference; sampled queries stay close to it."""
    from qarm.align.evaluate import business_agreement
    rng = np.random.default_rng(0)
    business = rng.integers(0, 5, size=600)
    business[::50] = -1                                            # unlabelled rows are ignored
    centres = rng.normal(size=(5, 16))
    emb = (centres[np.maximum(business, 0)] + rng.normal(scale=1.5, size=(600, 16))).astype(np.float32)
    x, y = emb[business >= 0], business[business >= 0]
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    nn = np.argsort(-full, axis=1)[:, :10]
    reference = float((y[nn] == y[:, None]).mean())
    blocked = business_agreement(emb, business, seed=0, chunk=37)
    assert blocked["business_precision@10"] == reference
    assert 0.0 <= blocked["business_nmi"] <= 1.0
    sampled = business_agreement(emb, business, seed=0, max_queries=200, chunk=37)
    assert sampled["business_precision@10"] != reference          # a sample, not the full set
    assert abs(sampled["business_precision@10"] - reference) < 0.05
    assert sampled["business_nmi"] == blocked["business_nmi"]
