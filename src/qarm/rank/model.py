"""The ranker, assembled from ``FeatureSpec``s: embeddings, DIN target attention, multi-task towers.

Speed trick: every item-side feature is a property of the item, so each step first builds the
item table [R, D] (id embedding ++ pooled VQ bag ++ RQ level / prefix embeddings) for the whole
catalogue, then gathers the target and history rows from it. Code embeddings still train end to
end (gradients flow through the gather), but a history of 50 items costs 50 row gathers instead
of 50 x (1 + K + L) embedding lookups.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from qarm.rank.features import FeatureSpec, ItemTables


def mlp(sizes: list[int], last_act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class TargetAttention(nn.Module):
    """DIN activation unit: weight_j = MLP([q, k_j, q - k_j, q * k_j]); output sum_j weight_j k_j.

    The first layer is split as W[q; k; q-k; q*k] = A q + B k + C (q * k), so its key part B k is
    computed once per catalogue item on the item table and gathered, not once per history slot.
    No softmax (as in DIN): the weights keep the intensity of interest; padding slots weigh 0.
    """

    def __init__(self, dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.q = nn.Linear(dim, hidden[0])
        self.k = nn.Linear(dim, hidden[0], bias=False)
        self.qk = nn.Linear(dim, hidden[0], bias=False)
        self.out = nn.Sequential(nn.ReLU(), mlp(hidden + [1], last_act=False))

    def forward(self, query: torch.Tensor, table: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """query [B, D], table [R, D], seq [B, N] item rows (0 = padding) -> pooled [B, D]."""
        keys = F.embedding(seq, table)                                          # [B, N, D]
        h = self.q(query).unsqueeze(1) + F.embedding(seq, self.k(table)) + self.qk(query.unsqueeze(1) * keys)
        w = self.out(h).squeeze(-1) * (seq > 0)                                  # [B, N]
        return torch.bmm(w.unsqueeze(1), keys).squeeze(1)


class RankModel(nn.Module):
    """Multi-task ranker over one variant's features.

    ``tables`` supplies the per-item index and dense arrays (stored as buffers: the frozen dense
    embeddings never train). forward(batch) -> logits float32 [B, n_tasks].
    """

    def __init__(self, specs: list[FeatureSpec], tables: ItemTables, n_tasks: int, att_hidden: list[int],
                 dnn_hidden: list[int], towers: str = "shared", n_experts: int = 4) -> None:
        super().__init__()
        self.specs = specs
        by_kind = lambda k: [s for s in specs if s.kind == k]  # noqa: E731
        self.item_specs, self.dense_specs = by_kind("item"), by_kind("dense")
        self.count_specs, self.seq_specs = by_kind("count"), by_kind("sequence")
        (user_spec,) = by_kind("user")
        self.user = nn.Embedding(user_spec.vocab, user_spec.dim)
        self.item = nn.ModuleDict({s.name: nn.Embedding(s.vocab, s.dim, padding_idx=0) for s in self.item_specs})
        for s in self.item_specs:  # persistent: a saved model scores without the run's code tables
            self.register_buffer(f"idx_{s.name}", torch.as_tensor(tables.index[s.name]).reshape(tables.n_rows, -1))
        for i, s in enumerate(self.dense_specs):
            self.register_buffer(f"dense_{i}", torch.as_tensor(tables.dense[s.name]))
        self.dense_proj = nn.ModuleList(nn.Linear(s.vocab, s.dim, bias=False) for s in self.dense_specs)
        self.count = nn.ModuleList(nn.Embedding(s.vocab, s.dim) for s in self.count_specs)
        item_dim = sum(s.dim for s in self.item_specs)
        self.attention = nn.ModuleList(TargetAttention(item_dim, att_hidden) for _ in self.seq_specs)
        in_dim = (user_spec.dim + item_dim * (1 + len(self.seq_specs)) + 2 * sum(s.dim for s in self.dense_specs)
                  + sum(s.dim for s in self.count_specs))
        self.towers = towers
        if towers == "mmoe":
            self.experts = nn.ModuleList(mlp([in_dim] + dnn_hidden) for _ in range(n_experts))
            self.gates = nn.Linear(in_dim, n_experts * n_tasks)
            self.heads = nn.ModuleList(nn.Linear(dnn_hidden[-1], 1) for _ in range(n_tasks))
        else:
            self.bottom = mlp([in_dim] + dnn_hidden)
            self.head = nn.Linear(dnn_hidden[-1], n_tasks)
        self.n_tasks = n_tasks
        for emb in [self.user, *self.item.values(), *self.count]:
            nn.init.normal_(emb.weight, std=0.01)

    def item_table(self) -> torch.Tensor:
        """[R, D]: every item's id and code embeddings (multi-valued codes pooled), concatenated."""
        parts = []
        for s in self.item_specs:
            idx = getattr(self, f"idx_{s.name}")
            e = self.item[s.name](idx)                                  # [R, w, d]
            if s.pooling == "none":
                parts.append(e[:, 0])
            else:
                pooled = e.sum(1)                                       # padding rows are zero
                parts.append(pooled / (idx > 0).sum(1, keepdim=True).clamp(min=1) if s.pooling == "mean" else pooled)
        return torch.cat(parts, dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        table = self.item_table()
        target = batch["target"]
        tgt = F.embedding(target, table)
        parts = [self.user(batch["user"]), tgt]
        for spec, att in zip(self.seq_specs, self.attention):
            parts.append(att(tgt, table, batch[spec.name]))
        hist = batch["history"]
        n_hist = (hist > 0).sum(1, keepdim=True).clamp(min=1)
        for i, proj in enumerate(self.dense_proj):
            # frozen vectors, trainable projection (no bias, so the PAD row stays 0): the mean of
            # P x over the history is P (mean x), so project the catalogue once, then gather
            dense = proj(getattr(self, f"dense_{i}"))
            parts += [dense[target], F.embedding(hist, dense).sum(1) / n_hist]
        for j, emb in enumerate(self.count):
            parts.append(emb(batch["counts"][:, j]))
        x = torch.cat(parts, dim=1)
        if self.towers == "mmoe":
            experts = torch.stack([e(x) for e in self.experts], 1)                 # [B, E, H]
            gates = self.gates(x).view(len(x), self.n_tasks, -1).softmax(-1)      # [B, T, E]
            mixed = torch.bmm(gates, experts)                                      # [B, T, H]
            return torch.cat([h(mixed[:, t]) for t, h in enumerate(self.heads)], 1)
        return self.head(self.bottom(x))
