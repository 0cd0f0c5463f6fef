"""The model: DIN attention equals the textbook formula, frozen dense inputs, trainable codes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from qarm.rank.features import FeatureSpec, ItemTables
from qarm.rank.model import RankModel, TargetAttention


def test_target_attention_equals_din_activation_unit_on_concatenated_inputs():
    torch.manual_seed(0)
    att = TargetAttention(dim=6, att_dim=6, hidden=[5, 3])
    w1 = torch.randn(5, 24)  # textbook first layer over [q, k, q - k, q * k]
    wq, wk, wd, wp = w1.split(6, dim=1)
    with torch.no_grad():
        att.q.weight.copy_(wq + wd)
        att.b.copy_((wk - wd).T)
        att.c.copy_(wp.T)
    table = torch.randn(9, 6)
    table[0] = 0
    seq = torch.tensor([[0, 0, 3, 4], [5, 6, 7, 8], [0, 0, 0, 0]])
    query = torch.randn(3, 6)
    keys = table[seq]
    q = query.unsqueeze(1).expand_as(keys)
    h = F.linear(torch.cat([q, keys, q - keys, q * keys], -1), w1, att.q.bias)
    w = att.out(h).squeeze(-1) * (seq > 0)
    ref = (w.unsqueeze(-1) * keys).sum(1)
    got = att(query, table, seq)
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.equal(got[2], torch.zeros(6))  # empty history: nothing attended, no NaN


def _tiny_tables(n_items: int = 30, d_dense: int = 5) -> ItemTables:
    rng = np.random.default_rng(0)
    t = ItemTables(item_ids=np.arange(n_items, dtype=np.int64))
    t.index["item_id"] = np.r_[0, 1, np.arange(2, n_items + 2)][:, None].astype(np.int64)
    t.index["vq"] = np.r_[np.zeros((1, 3)), np.ones((1, 3)), rng.integers(2, 12, (n_items, 3))].astype(np.int64)
    t.dense["emb_raw.npy"] = np.r_[np.zeros((2, d_dense)), rng.normal(size=(n_items, d_dense))].astype(np.float32)
    t.vocab.update({"item_id": n_items + 2, "vq": 12, "emb_raw.npy": d_dense})
    return t


def test_dense_inputs_stay_frozen_and_code_embeddings_train():
    torch.manual_seed(0)
    t = _tiny_tables()
    specs = [FeatureSpec("user_id", "user", 10, 4), FeatureSpec("item_id", "item", 32, 4),
             FeatureSpec("vq", "item", 12, 4, "mean", 3), FeatureSpec("history", "sequence", 6, 0),
             FeatureSpec("emb_raw.npy", "dense", 5, 4)]
    model = RankModel(specs, t, n_tasks=2, att_hidden=[8, 4], dnn_hidden=[16, 8], towers="mmoe", n_experts=2, att_dim=4)
    frozen = model.dense_0.clone()
    assert not any(p is model.dense_0 for p in model.parameters())
    assert "dense_0" not in model.state_dict()  # data, rebuilt from the tables on load
    batch = {"user": torch.tensor([2, 3, 1]), "target": torch.tensor([2, 5, 9]),
             "history": torch.tensor([[0, 0, 0, 0, 0, 0], [0, 3, 4, 5, 6, 7], [2, 3, 4, 5, 6, 8]])}
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    vq_before = model.item["vq"].weight.detach().clone()
    logits = model(batch)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()  # the empty history included
    F.binary_cross_entropy_with_logits(logits, torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])).backward()
    opt.step()
    assert torch.equal(model.dense_0, frozen)
    assert not torch.equal(model.item["vq"].weight, vq_before)
