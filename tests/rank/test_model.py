"""The model: DIN attention equals the textbook formula, frozen dense inputs, trainable codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qarm.rank.features import UNKNOWN, FeatureSpec, ItemTables
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


def _code_tables(n_items: int = 3000, k: int = 4, depth: int = 3, d_dense: int = 6) -> ItemTables:
    """A catalogue with VQ bags, RQ levels / prefixes and one dense embedding (random, seeded)."""
    rng = np.random.default_rng(1)
    t = _tiny_tables(n_items, d_dense)
    rows = n_items + 2
    t.index["vq"] = np.r_[np.zeros((1, k)), np.ones((1, k)), rng.integers(0, 40, (n_items, k))].astype(np.int64)
    t.vocab["vq"] = 40
    for d in range(1, depth + 1):
        t.index[f"rq_l{d}"] = rng.integers(0, 9, (rows, 1))
        t.vocab[f"rq_l{d}"] = 9
    for d in range(2, depth + 1):
        t.index[f"rq_p{d}"] = rng.integers(0, 30, (rows, 1))
        t.vocab[f"rq_p{d}"] = 30
    t.index["vq"][0] = t.index["rq_l1"][0] = 0
    return t


def test_a_code_with_content_is_its_row_plus_the_projected_content_vector():
    """``FeatureSpec.content``: e(code) = row(code) + W content(code); OOV / PAD content is 0, the
    content vectors are frozen data and the projection trains."""
    torch.manual_seed(0)
    t = _code_tables()
    rng = np.random.default_rng(3)
    t.content = {"vq": rng.normal(size=(40, 5)).astype(np.float32), "rq_l1": rng.normal(size=(9, 5)).astype(np.float32)}
    t.content["vq"][:2] = t.content["rq_l1"][:2] = 0.0
    specs = [FeatureSpec("user_id", "user", 10, 4), FeatureSpec("item_id", "item", t.vocab["item_id"], 4),
             FeatureSpec("vq", "item", 40, 4, "mean", 4, content=5), FeatureSpec("rq_l1", "item", 9, 3, content=5),
             FeatureSpec("rq_l2", "item", 9, 3), FeatureSpec("history", "sequence", 5, 0)]
    model = RankModel(specs, t, n_tasks=1, att_hidden=[8, 4], dnn_hidden=[16, 8], att_dim=4)
    assert not any(k.startswith("content_") and "proj" not in k for k in model.state_dict())
    rows = torch.tensor([0, 1, 2, 7, 3001])
    feats = model.row_features(rows)
    got = model.item_vectors(feats)
    w_vq, w_l1 = model.content_proj["vq"].weight, model.content_proj["rq_l1"].weight
    vq_idx, l1_idx = feats["vq"], feats["rq_l1"][:, 0]
    keep = (vq_idx > 0).unsqueeze(-1).float()
    vq_rows = model.item["vq"].weight[vq_idx] + torch.from_numpy(t.content["vq"])[vq_idx] @ w_vq.T
    want = torch.cat([model.item["item_id"].weight[feats["item_id"][:, 0]],
                      (vq_rows * keep).sum(1) / keep.sum(1).clamp(min=1),
                      model.item["rq_l1"].weight[l1_idx] + torch.from_numpy(t.content["rq_l1"])[l1_idx] @ w_l1.T,
                      model.item["rq_l2"].weight[feats["rq_l2"][:, 0]]], 1)
    assert torch.allclose(got, want, atol=1e-6)
    grad = torch.autograd.grad(got.sum(), [w_vq, w_l1])
    assert all(g.abs().sum() > 0 for g in grad)
    with pytest.raises(ValueError, match="content vectors of shape"):
        RankModel([*specs[:3], FeatureSpec("rq_l1", "item", 9, 3, content=6), *specs[4:]], t, 1, [8, 4], [16, 8])
    # rows=False (rank.code_rows: false): no trainable table, the code is its projected content
    bare = [*specs[:2], FeatureSpec("vq", "item", 40, 4, "mean", 4, content=5, rows=False), *specs[3:]]
    model = RankModel(bare, t, n_tasks=1, att_hidden=[8, 4], dnn_hidden=[16, 8], att_dim=4)
    assert "vq" not in model.item
    got = model.item_vectors(model.row_features(rows))
    vq_only = torch.from_numpy(t.content["vq"])[vq_idx] @ model.content_proj["vq"].weight.T
    assert torch.allclose(got[:, 4:8], (vq_only * keep).sum(1) / keep.sum(1).clamp(min=1), atol=1e-6)
    with pytest.raises(ValueError, match="without rows needs content vectors"):
        RankModel([*specs[:2], FeatureSpec("vq", "item", 40, 4, "mean", 4, rows=False), *specs[3:]], t, 1, [8, 4], [16, 8])


def _reference_logits(model: RankModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The former whole-catalogue computation: every item's vector [R, D], then gathers."""
    n_rows = model.idx_item_id.shape[0]
    table = model.item_vectors(model.row_features(torch.arange(n_rows)))
    tgt = table[batch["target"]]
    parts = [model.user.weight[batch["user"]], tgt]
    for spec, att in zip(model.seq_specs, model.attention):
        parts.append(att(tgt, table, batch[spec.name]))
    parts += [emb.weight[batch["counts"][:, j]] for j, emb in enumerate(model.count)]
    return model.head(model.bottom(torch.cat(parts, 1)))


def test_a_batch_that_touches_few_items_gives_the_whole_table_logits():
    torch.manual_seed(0)
    t = _code_tables()
    specs = [FeatureSpec("user_id", "user", 10, 4), FeatureSpec("item_id", "item", t.vocab["item_id"], 4),
             FeatureSpec("vq", "item", 40, 4, "mean", 4), FeatureSpec("history", "sequence", 5, 0),
             *[FeatureSpec(f"rq_l{d}", "item", 9, 3) for d in (1, 2, 3)],
             *[FeatureSpec(f"rq_p{d}", "item", 30, 3) for d in (2, 3)],
             FeatureSpec("emb_raw.npy", "dense", 6, 4), FeatureSpec("sim", "sequence", 3, 0),
             FeatureSpec("rq_match_1", "count", 18, 2), FeatureSpec("vq_overlap_items", "count", 18, 2)]
    model = RankModel(specs, t, n_tasks=2, att_hidden=[8, 4], dnn_hidden=[16, 8], att_dim=4).eval()
    rng = np.random.default_rng(2)
    hist = rng.integers(2, 40, (6, 5))
    hist[0] = 0                      # an empty history
    hist[1, :2] = 0                  # a short one
    batch = {"user": torch.tensor([2, 3, 1, 4, 5, 1]), "target": torch.tensor([2, 3001, 17, 5, 2, 40]),
             "history": torch.as_tensor(hist), "sim": torch.as_tensor(rng.integers(0, 40, (6, 3))),
             "counts": torch.as_tensor(rng.integers(0, 18, (6, 2)))}
    with torch.no_grad():
        got, ref = model(batch), _reference_logits(model, batch)
    assert torch.allclose(got, ref, atol=1e-6, rtol=1e-5)
    # and the gradients agree: only the touched rows of each embedding receive any
    model.train()
    g_got = torch.autograd.grad(model(batch).sum(), model.item["vq"].weight)[0]
    g_ref = torch.autograd.grad(_reference_logits(model, batch).sum(), model.item["vq"].weight)[0]
    assert torch.allclose(g_got, g_ref, atol=1e-6)
    touched = np.unique(t.index["vq"][np.unique(np.r_[hist.ravel(), batch["sim"].numpy().ravel(), [2, 3001, 17, 5, 40]])])
    assert set(np.flatnonzero(g_got.abs().sum(1).numpy() > 0)) <= set(touched.tolist())


def test_embedding_l2_is_the_squared_norm_of_the_rows_a_step_reads():
    torch.manual_seed(0)
    t = _code_tables(50)
    specs = [FeatureSpec("user_id", "user", 10, 4), FeatureSpec("item_id", "item", t.vocab["item_id"], 4),
             FeatureSpec("vq", "item", 40, 4, "mean", 4), FeatureSpec("rq_l1", "item", 9, 3),
             FeatureSpec("history", "sequence", 3, 0)]
    model = RankModel(specs, t, n_tasks=1, att_hidden=[8, 4], dnn_hidden=[8], att_dim=4)
    batch = {"user": torch.tensor([2, 3, 3, 1]), "target": torch.tensor([2, 5, 5, 9]),
             "history": torch.tensor([[0, 0, 4], [2, 6, 7], [0, 0, 0], [8, 8, 2]])}
    model(batch)
    assert model.penalty is None   # off by default
    model.embedding_l2 = 0.1
    model(batch)
    rows = torch.unique(torch.cat([batch["target"], batch["history"].ravel()]))
    expect = (model.user.weight[batch["user"]] ** 2).sum()
    for name in ("item_id", "vq", "rq_l1"):
        idx = getattr(model, f"idx_{name}")[rows]
        e = model.item[name].weight[idx] * (idx > 0).unsqueeze(-1)       # padding codes read nothing
        expect = expect + (e ** 2).sum()
    assert torch.allclose(model.penalty, 0.1 * expect / 4)
    # its gradient shrinks exactly the rows the step read, nothing else
    grad = torch.autograd.grad(model.penalty, model.item["vq"].weight)[0]
    read = torch.unique(model.idx_vq[rows])
    assert set(torch.nonzero(grad.abs().sum(1)).ravel().tolist()) == set(read[read > 0].tolist())
    model.eval()
    model(batch)
    assert model.penalty is None   # training only


def test_rows_without_an_id_do_not_train_their_codes_when_detach_idless_codes():
    t = _code_tables(50)
    t.index["item_id"][[3, 4]] = UNKNOWN          # two trained items made cold (rank.simulated_cold)
    specs = [FeatureSpec("user_id", "user", 10, 4), FeatureSpec("item_id", "item", t.vocab["item_id"], 4),
             FeatureSpec("vq", "item", 40, 4, "mean", 4), FeatureSpec("history", "sequence", 2, 0)]
    batch = {"user": torch.tensor([2, 3]), "target": torch.tensor([3, 4]), "history": torch.tensor([[3, 4], [4, 0]])}
    grads = {}
    for detach in (False, True):
        torch.manual_seed(0)
        model = RankModel(specs, t, n_tasks=1, att_hidden=[8, 4], dnn_hidden=[8], att_dim=4)
        model.detach_idless_codes = detach
        grads[detach] = torch.autograd.grad(model(batch).sum(), model.item["vq"].weight, allow_unused=True)[0]
        logits = model(batch)
    assert grads[False].abs().sum() > 0
    assert grads[True] is None or grads[True].abs().sum() == 0   # only id-less rows in the batch
    # the forward is the same: only the gradient is stopped
    torch.manual_seed(0)
    plain = RankModel(specs, t, n_tasks=1, att_hidden=[8, 4], dnn_hidden=[8], att_dim=4)
    assert torch.equal(plain(batch), logits)


def test_id_dropout_replaces_ids_with_the_oov_row_in_training_only():
    torch.manual_seed(0)
    t = _tiny_tables(200)
    specs = [FeatureSpec("user_id", "user", 10, 4), FeatureSpec("item_id", "item", 202, 4),
             FeatureSpec("history", "sequence", 4, 0)]
    model = RankModel(specs, t, n_tasks=1, att_hidden=[8, 4], dnn_hidden=[8], att_dim=4)
    model.item_id_dropout = model.user_id_dropout = 0.5
    batch = {"user": torch.arange(2, 10), "target": torch.arange(2, 10), "history": torch.randint(2, 200, (8, 4))}
    before = model.item["item_id"].weight[1].detach().clone(), model.user.weight[1].detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(batch).sum().backward()
    opt.step()
    # rows 1 (OOV) of both embeddings never appear in the batch: only dropout can have trained them
    assert not torch.equal(model.item["item_id"].weight[1], before[0])
    assert not torch.equal(model.user.weight[1], before[1])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), model(batch))  # no dropout at evaluation


def test_drop_private_codes_hides_the_codes_only_that_row_has_when_its_id_drops():
    """A dropped row looks like a held-out item: no id, and only the codes other trained items
    share. Off (the default), training draws the same random numbers as before the option."""
    t = _tiny_tables(6)
    # item rows 2..7; rows 6 and 7 are held out (OOV id). rq_p2 code 5 is row 2's alone, code 4
    # rows 3 and 4 share, code 6 only held-out rows carry (not "private": no trained row has it)
    t.index["item_id"][6:] = UNKNOWN
    t.index["rq_p2"] = np.array([0, 1, 5, 4, 4, 3, 6, 6])[:, None].astype(np.int64)
    t.vocab["rq_p2"] = 7
    specs = [FeatureSpec("user_id", "user", 10, 4), FeatureSpec("item_id", "item", 8, 4),
             FeatureSpec("rq_p2", "item", 7, 2), FeatureSpec("history", "sequence", 3, 0)]
    torch.manual_seed(0)
    model = RankModel(specs, t, n_tasks=1, att_hidden=[8, 4], dnn_hidden=[8], att_dim=4)
    assert model.private_codes()["rq_p2"][:, 0].tolist() == [False, False, True, False, False, True, False, False]
    assert "item_id" not in model.private_codes()
    rows = torch.arange(2, 8)
    model.train()
    model.item_id_dropout, model.drop_private_codes = 0.999999, True     # every known id drops
    # which rows each lookup read shows in which embedding rows receive a gradient
    model.item_vectors(model.row_features(rows)).sum().backward()
    p2_grad = model.item["rq_p2"].weight.grad.abs().sum(1)
    id_grad = model.item["item_id"].weight.grad.abs().sum(1)
    assert p2_grad[5] == 0 and p2_grad[3] == 0            # private codes were hidden (-> OOV row 1)
    assert p2_grad[4] > 0 and p2_grad[6] > 0 and p2_grad[1] > 0   # shared and held-out codes kept
    assert id_grad[2:].sum() == 0 and id_grad[1] > 0      # every id went to the OOV row
    # off: private codes stay whatever happens to the id
    model.zero_grad()
    model.drop_private_codes = False
    model.item_vectors(model.row_features(rows)).sum().backward()
    assert model.item["rq_p2"].weight.grad.abs().sum(1)[5] > 0


def test_id_dropout_draws_are_unchanged_by_the_private_code_masks():
    t = _code_tables(n_items=50)
    specs = [FeatureSpec("user_id", "user", 10, 4), FeatureSpec("item_id", "item", t.vocab["item_id"], 4),
             FeatureSpec("vq", "item", 40, 4, "mean", 4), FeatureSpec("history", "sequence", 5, 0),
             FeatureSpec("rq_p2", "item", 30, 3)]
    torch.manual_seed(0)
    model = RankModel(specs, t, n_tasks=1, att_hidden=[8, 4], dnn_hidden=[8], att_dim=4)
    model.train()
    model.item_id_dropout = model.code_dropout = 0.3
    rows = torch.arange(2, 52)
    torch.manual_seed(7)
    off = model.item_vectors(model.row_features(rows))
    # the same draws by hand: ids first ([U, 1]), then each code feature in spec order
    torch.manual_seed(7)
    feats = model.row_features(rows)
    hit = torch.rand(feats["item_id"].shape) < 0.3
    ids = torch.where(hit & (feats["item_id"] > UNKNOWN), UNKNOWN, feats["item_id"])
    assert torch.equal(off[:, :4], model.item["item_id"].weight[ids[:, 0]])
    model.drop_private_codes = True
    torch.manual_seed(7)
    on = model.item_vectors(model.row_features(rows))
    assert torch.equal(on[:, :4], off[:, :4])       # same id draws with the option on


def test_sparse_tables_give_the_same_logits_and_gradients_and_move_only_touched_rows():
    """``sparse=True``: F.embedding with sparse gradients instead of index_select. Same forward,
    same gradient (densified); row-wise Adam then leaves every row the step's batch did not touch
    where it was, which dense Adam does not once a row has momentum."""
    from qarm.optim import JointOptimizer, adam_with_sparse_tables

    t = _code_tables(n_items=500)
    specs = [FeatureSpec("user_id", "user", 10, 4), FeatureSpec("item_id", "item", t.vocab["item_id"], 4),
             FeatureSpec("vq", "item", 40, 4, "mean", 4), FeatureSpec("history", "sequence", 5, 0),
             *[FeatureSpec(f"rq_l{d}", "item", 9, 3) for d in (1, 2, 3)]]
    models = {}
    for sparse in (False, True):
        torch.manual_seed(0)
        models[sparse] = RankModel(specs, t, n_tasks=1, att_hidden=[8, 4], dnn_hidden=[16, 8], att_dim=4, sparse=sparse)
    dense_m, sparse_m = models[False], models[True]
    assert sparse_m.user.sparse and all(e.sparse for e in sparse_m.item.values())
    rng = np.random.default_rng(3)
    def batch(lo, hi):
        return {"user": torch.as_tensor(rng.integers(1, 10, 8)), "target": torch.as_tensor(rng.integers(lo, hi, 8)),
                "history": torch.as_tensor(rng.integers(lo, hi, (8, 5)))}
    b1, b2 = batch(2, 200), batch(300, 500)        # disjoint item rows
    y = torch.ones(8, 1)
    for m in (dense_m, sparse_m):
        m.train()
    out_d, out_s = dense_m(b1), sparse_m(b1)
    assert torch.equal(out_d, out_s)
    F.binary_cross_entropy_with_logits(out_d, y).backward()
    F.binary_cross_entropy_with_logits(out_s, y).backward()
    g_s = sparse_m.item["item_id"].weight.grad
    assert g_s.is_sparse
    assert torch.allclose(g_s.to_dense(), dense_m.item["item_id"].weight.grad, atol=1e-7)
    tables = [e.weight for e in sparse_m.modules() if isinstance(e, torch.nn.Embedding) and e.sparse]
    opt_s = adam_with_sparse_tables(list(sparse_m.parameters()), tables, lr=0.05)
    opt_d = adam_with_sparse_tables(list(dense_m.parameters()), [], lr=0.05)
    assert isinstance(opt_s, JointOptimizer) and isinstance(opt_d, torch.optim.Adam)
    opt_s.step(), opt_d.step()
    first = {s: m.item["item_id"].weight.detach().clone() for s, m in models.items()}
    for opt, m in ((opt_s, sparse_m), (opt_d, dense_m)):   # a second step on other rows only
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(m(b2), y).backward()
        opt.step()
    rows1 = torch.unique(torch.cat([b1["target"], b1["history"].ravel()]))
    rows1 = rows1[~torch.isin(rows1, torch.cat([b2["target"], b2["history"].ravel()]))]
    assert torch.equal(sparse_m.item["item_id"].weight[rows1], first[True][rows1])
    assert not torch.equal(dense_m.item["item_id"].weight[rows1], first[False][rows1])
    state = opt_s.state_dict()                       # checkpointable as one
    opt_s.load_state_dict(state)
    assert len(state["optimizers"]) == 2
