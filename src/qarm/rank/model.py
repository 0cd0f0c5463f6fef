"""The ranker, assembled from ``FeatureSpec``s: embeddings, DIN target attention, multi-task towers.

Speed trick: every item-side feature is a property of the item, so each step first builds the
item table [R, D] (id embedding ++ pooled VQ bag ++ RQ level / prefix embeddings) for the whole
catalogue, then gathers the target and history rows from it. Code embeddings still train end to
end (gradients flow through the gather), but a history of 50 items costs 50 row gathers instead
of 50 x (1 + K + L) embedding lookups.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from qarm.rank.features import FeatureSpec, ItemTables


def mlp(sizes: list[int], last_act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def gather(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table [R, D], idx int64 [...] -> [..., D]. index_select: its backward (index_add) is about
    twice as fast on CPU as F.embedding's dense backward."""
    return table.index_select(0, idx.reshape(-1)).view(*idx.shape, table.shape[-1])


class TargetAttention(nn.Module):
    """DIN activation unit: weight_j = MLP([q, k_j, q - k_j, q * k_j]); output sum_j weight_j v_j.

    q, k are the target's and history item's vectors projected to ``att_dim`` (the item vector
    concatenates id and code embeddings; scoring in a small projection keeps the per-slot cost of
    every variant that of an id-only DIN), v_j the full item vectors. The first layer is
    rewritten as W[q; k; q-k; q*k] = A q + k (diag(q) C + B): one [A, H] matrix per target and a
    single batched matmul over the slots (no [B, N, 4A] concatenation). No softmax, as in DIN:
    the weights keep the intensity; padding slots weigh 0.
    """

    def __init__(self, dim: int, att_dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, att_dim, bias=False) if dim != att_dim else nn.Identity()
        self.q = nn.Linear(att_dim, hidden[0])
        self.c = nn.Parameter(torch.randn(att_dim, hidden[0]) / att_dim ** 0.5)   # acts on q * k
        self.b = nn.Parameter(torch.randn(att_dim, hidden[0]) / att_dim ** 0.5)   # acts on k
        self.out = nn.Sequential(nn.ReLU(), mlp(hidden + [1], last_act=False))

    def forward(self, query: torch.Tensor, table: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """query [B, D], table [R, D], seq [B, N] item rows (0 = padding) -> pooled [B, D]."""
        a = self.proj(table)                                                    # [R, A]
        if a is table:
            keys = values = gather(table, seq)
        else:
            keys, values = gather(torch.cat([a, table], 1), seq).split([a.shape[1], table.shape[1]], -1)
        q = self.proj(query)
        per_target = q.unsqueeze(-1) * self.c + self.b                         # [B, A, H]
        h = torch.baddbmm(self.q(q).unsqueeze(1), keys, per_target)            # [B, N, H]
        w = self.out(h).squeeze(-1) * (seq > 0)                                 # [B, N]
        return torch.bmm(w.unsqueeze(1), values).squeeze(1)


class RankModel(nn.Module):
    """Multi-task ranker over one variant's features.

    ``tables`` supplies the per-item index and dense arrays (stored as buffers: the frozen dense
    embeddings never train). forward(batch) -> logits float32 [B, n_tasks].
    """

    def __init__(self, specs: list[FeatureSpec], tables: ItemTables, n_tasks: int, att_hidden: list[int],
                 dnn_hidden: list[int], towers: str = "shared", n_experts: int = 4, att_dim: int = 16) -> None:
        super().__init__()
        self.specs = specs
        def by_kind(kind: str) -> list[FeatureSpec]:
            return [s for s in specs if s.kind == kind]

        self.item_specs, self.dense_specs = by_kind("item"), by_kind("dense")
        self.count_specs, self.seq_specs = by_kind("count"), by_kind("sequence")
        (user_spec,) = by_kind("user")
        self.user = nn.Embedding(user_spec.vocab, user_spec.dim)
        self.item = nn.ModuleDict({s.name: nn.Embedding(s.vocab, s.dim) for s in self.item_specs})
        # item tables are data, not weights: rebuilt from ``tables`` on load, never trained
        for s in self.item_specs:
            idx = torch.as_tensor(tables.index[s.name]).reshape(tables.n_rows, -1)
            self.register_buffer(f"idx_{s.name}", idx, persistent=False)
        for i, s in enumerate(self.dense_specs):
            self.register_buffer(f"dense_{i}", torch.as_tensor(tables.dense[s.name]), persistent=False)
        self.dense_proj = nn.ModuleList(nn.Linear(s.vocab, s.dim, bias=False) for s in self.dense_specs)
        self.count = nn.ModuleList(nn.Embedding(s.vocab, s.dim) for s in self.count_specs)
        item_dim = sum(s.dim for s in self.item_specs)
        self.attention = nn.ModuleList(TargetAttention(item_dim, att_dim, att_hidden) for _ in self.seq_specs)
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
            e = gather(self.item[s.name].weight, idx)                   # [R, w, d]
            if s.pooling == "none":
                parts.append(e[:, 0])
            else:
                pooled = (e * (idx > 0).unsqueeze(-1)).sum(1)            # padding codes count 0
                parts.append(pooled / (idx > 0).sum(1, keepdim=True).clamp(min=1) if s.pooling == "mean" else pooled)
        return torch.cat(parts, dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        table = self.item_table()
        target = batch["target"]
        tgt = table.index_select(0, target)
        parts = [gather(self.user.weight, batch["user"]), tgt]
        for spec, att in zip(self.seq_specs, self.attention):
            parts.append(att(tgt, table, batch[spec.name]))
        hist = batch["history"]
        n_hist = (hist > 0).sum(1, keepdim=True).clamp(min=1)
        for i, proj in enumerate(self.dense_proj):
            # frozen vectors, trainable projection (no bias, so the PAD row stays 0): the mean of
            # P x over the history is P (mean x), so project the catalogue once, then gather
            dense = proj(getattr(self, f"dense_{i}"))
            parts += [dense[target], gather(dense, hist).sum(1) / n_hist]
        for j, emb in enumerate(self.count):
            parts.append(gather(emb.weight, batch["counts"][:, j]))
        x = torch.cat(parts, dim=1)
        if self.towers == "mmoe":
            experts = torch.stack([e(x) for e in self.experts], 1)                 # [B, E, H]
            gates = self.gates(x).view(len(x), self.n_tasks, -1).softmax(-1)      # [B, T, E]
            mixed = torch.bmm(gates, experts)                                      # [B, T, H]
            return torch.cat([h(mixed[:, t]) for t, h in enumerate(self.heads)], 1)
        return self.head(self.bottom(x))
