"""The ranker, assembled from ``FeatureSpec``s: embeddings, DIN target attention, multi-task towers.

Per-step cost is O(batch), never O(catalogue): a step collects the item rows its batch touches
(targets, history, SIM), uniques them, builds each unique row's item vector once (id embedding ++
pooled VQ bag ++ RQ level / prefix embeddings ++ projected frozen dense vectors) and indexes back.
Code embeddings train end to end (gradients flow through the gather), and a history of 50 items
costs 50 row gathers of vectors built once per batch instead of 50 x (1 + K + L) lookups.

Serving passes its own small item table (``items`` in the batch: the rows of one request, new
items included), built the same way, so online and offline scores come from the same ops.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from qarm.rank.features import PAD, UNKNOWN, FeatureSpec, ItemTables


def mlp(sizes: list[int], last_act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def gather(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table [R, D], idx int [...] -> [..., D]. index_select: its backward (index_add) is about
    twice as fast on CPU as F.embedding's dense backward."""
    return table.index_select(0, idx.reshape(-1)).view(*idx.shape, table.shape[-1])


def lookup(emb: nn.Embedding, idx: torch.Tensor) -> torch.Tensor:
    """Rows of an embedding table, idx int [...] -> [..., d]: ``gather`` for a dense table, a sparse
    gradient (nnz = idx.numel(), O(batch)) for a ``sparse=True`` one. Same values either way."""
    if emb.sparse:
        return F.embedding(idx, emb.weight, sparse=True)
    return gather(emb.weight, idx)


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

    def forward(self, query: torch.Tensor, table: torch.Tensor, seq: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """query [B, D], table [U, D], seq [B, N] rows of ``table``, mask bool [B, N] (default
        ``seq > 0``: row 0 = padding) -> pooled [B, D]."""
        a = self.proj(table)                                                    # [U, A]
        if a is table:
            keys = values = gather(table, seq)
        else:
            keys, values = gather(torch.cat([a, table], 1), seq).split([a.shape[1], table.shape[1]], -1)
        q = self.proj(query)
        per_target = q.unsqueeze(-1) * self.c + self.b                         # [B, A, H]
        h = torch.baddbmm(self.q(q).unsqueeze(1), keys, per_target)            # [B, N, H]
        w = self.out(h).squeeze(-1) * (seq > 0 if mask is None else mask)       # [B, N]
        return torch.bmm(w.unsqueeze(1), values).squeeze(1)


class RankModel(nn.Module):
    """Multi-task ranker over one variant's features.

    ``tables`` supplies the per-item index and dense arrays (stored as buffers: the frozen dense
    embeddings never train). forward(batch) -> logits float32 [B, n_tasks].

    Training-only dropout (``id_dropout`` etc., set as attributes; 0 = off): each unique item row
    of a batch loses its id (-> the OOV id row) with probability ``item_id_dropout``, each of its
    codes (-> the OOV code row) with ``code_dropout``, each event its user id with
    ``user_id_dropout``. Draws come from torch's global generator, which ``fit`` seeds from
    (seed, epoch). So the OOV rows learn, and the model learns to lean on codes and content when
    an id is missing, as it is for every cold item.

    ``embedding_l2`` (training only): after each forward, ``penalty`` holds ``embedding_l2`` x the
    squared L2 norm of every embedding row the step read (each unique item row's id and code
    embeddings, padding codes left out; each event's user row), divided by the batch size; ``fit``
    adds it to the loss. Rows outside the batch are untouched, so the cost stays O(batch), sparse
    tables included. A row read in few batches is shrunk more, relative to its data gradient, than
    a popular one.

    ``detach_idless_codes`` (``rank.simulated_cold``, training only): a row whose id is the OOV row
    in the table itself (a simulated cold item, not a dropped id) reads its code embeddings through
    a stop-gradient: its events train the ranker around the codes, never the codes, so its codes
    are shaped by other items only, as a held-out item's are.

    ``drop_private_codes``: a row whose id is dropped also loses its *private* codes (-> OOV), the
    codes no other trained item carries (a unique RQ prefix is an item id under another name).
    A held-out item looks like that: no id, and only codes it shares with trained items (the
    others were compacted to OOV), so the dropped rows then simulate it, instead of an item that
    lost its id but kept a quasi-id.
    """

    def __init__(self, specs: list[FeatureSpec], tables: ItemTables, n_tasks: int, att_hidden: list[int],
                 dnn_hidden: list[int], towers: str = "shared", n_experts: int = 4, att_dim: int = 16,
                 sparse: bool = False) -> None:
        super().__init__()
        self.specs = specs
        def by_kind(kind: str) -> list[FeatureSpec]:
            return [s for s in specs if s.kind == kind]

        self.item_specs, self.dense_specs = by_kind("item"), by_kind("dense")
        self.count_specs, self.seq_specs = by_kind("count"), by_kind("sequence")
        (user_spec,) = by_kind("user")
        # sparse: the user and item-side tables (vocabularies of catalogue size) get sparse gradients
        # for row-wise Adam (qarm.optim), so a step moves only the rows its batch touched
        self.user = nn.Embedding(user_spec.vocab, user_spec.dim, sparse=sparse)
        # one table per item feature, except features that read another's (``FeatureSpec.table``)
        self.item = nn.ModuleDict({s.name: nn.Embedding(s.vocab, s.dim, sparse=sparse)
                                   for s in self.item_specs if not s.table and s.rows})
        for s in self.item_specs:
            if not s.rows and (s.table or not s.content):
                raise ValueError(f"feature {s.name!r} without rows needs content vectors and no shared table")
            own = self.item[s.table] if s.table in self.item else None
            if s.table and (own is None or own.embedding_dim != s.dim or own.num_embeddings != s.vocab):
                raise ValueError(f"feature {s.name!r} reads table {s.table!r}, which must be another item "
                                 f"feature's table of {s.vocab} x {s.dim}")
        # item tables are data, not weights: rebuilt from ``tables`` on load, never trained
        for s in self.item_specs:
            idx = torch.as_tensor(tables.index[s.name]).reshape(tables.n_rows, -1)
            self.register_buffer(f"idx_{s.name}", idx, persistent=False)
        # code content (rank.code_content): a code's embedding = its row + content_proj(its content
        # vector); the vectors are data (per vocabulary index, frozen), the projections weights
        self.content_proj = nn.ModuleDict()
        for s in self.item_specs:
            if s.content:
                vec = torch.as_tensor(tables.content[s.name])
                if vec.shape != (s.vocab, s.content):
                    raise ValueError(f"feature {s.name!r}: content vectors of shape {tuple(vec.shape)}, "
                                     f"expected ({s.vocab}, {s.content})")
                self.register_buffer(f"content_{s.name}", vec, persistent=False)
                self.content_proj[s.name] = nn.Linear(s.content, s.dim, bias=False)
        for i, s in enumerate(self.dense_specs):
            self.register_buffer(f"dense_{i}", torch.as_tensor(tables.dense[s.name]), persistent=False)
        # frozen vectors, trainable projection (no bias, so the PAD row stays 0)
        self.dense_proj = nn.ModuleList(nn.Linear(s.vocab, s.dim, bias=False) for s in self.dense_specs)
        self.count = nn.ModuleList(nn.Embedding(s.vocab, s.dim) for s in self.count_specs)
        item_dim = sum(s.dim for s in self.item_specs) + sum(s.dim for s in self.dense_specs)
        self.attention = nn.ModuleList(TargetAttention(item_dim, att_dim, att_hidden) for _ in self.seq_specs)
        in_dim = user_spec.dim + item_dim * (1 + len(self.seq_specs)) + sum(s.dim for s in self.count_specs)
        self.towers = towers
        if towers == "mmoe":
            self.experts = nn.ModuleList(mlp([in_dim] + dnn_hidden) for _ in range(n_experts))
            self.gates = nn.Linear(in_dim, n_experts * n_tasks)
            self.heads = nn.ModuleList(nn.Linear(dnn_hidden[-1], 1) for _ in range(n_tasks))
        else:
            self.bottom = mlp([in_dim] + dnn_hidden)
            self.head = nn.Linear(dnn_hidden[-1], n_tasks)
        self.n_tasks = n_tasks
        self.item_id_dropout = self.user_id_dropout = self.code_dropout = 0.0
        self.drop_private_codes = False
        self.embedding_l2 = 0.0
        self.detach_idless_codes = False   # rank.simulated_cold: id-less rows do not train their codes
        self.penalty: torch.Tensor | None = None   # the last training forward's embedding L2 term
        self._sq: torch.Tensor | None = None       # its item part, summed by item_vectors for forward
        self._private: dict[str, torch.Tensor] | None = None   # built on first use (1 byte per code)
        self._private_device: torch.device | None = None
        for emb in [self.user, *self.item.values(), *self.count]:
            nn.init.normal_(emb.weight, std=0.01)

    def row_features(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-item inputs of item rows int [U] from the model's tables: item feature name ->
        int64 [U, w] vocabulary indices, ``dense_<i>`` -> float32 [U, d]."""
        out = {s.name: getattr(self, f"idx_{s.name}").index_select(0, rows) for s in self.item_specs}
        if self.training and self.drop_private_codes:
            for name, private in self.private_codes().items():
                out[f"private_{name}"] = private.index_select(0, rows)
        for i in range(len(self.dense_specs)):
            out[f"dense_{i}"] = getattr(self, f"dense_{i}").index_select(0, rows)
        return out

    def private_codes(self) -> dict[str, torch.Tensor]:
        """Item feature name -> bool [R, w]: the row's code is known and exactly one trained row
        (one with a known item id) carries it. Built once, on the tables' device."""
        ids = self.idx_item_id
        if self._private is None or self._private_device != ids.device:
            trained = ids[:, 0] > UNKNOWN
            self._private, self._private_device = {}, ids.device
            for s in self.item_specs:
                if s.name == "item_id":
                    continue
                idx = getattr(self, f"idx_{s.name}")
                support = torch.bincount(idx[trained].reshape(-1), minlength=s.vocab)
                self._private[s.name] = (support[idx] == 1) & (idx > UNKNOWN)
        return self._private

    def item_vectors(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """[U, D]: each row's id and code embeddings (multi-valued codes pooled) and projected
        dense vectors, concatenated. ``feats`` as ``row_features`` returns."""
        parts = []
        self._sq = None
        id_hit = None    # [U, 1] rows whose id is dropped (drawn first: item_id is the first item feature)
        idless = None    # [U, 1, 1] rows without an id in the table (simulated cold items), codes detached
        if self.training and self.detach_idless_codes and "item_id" in feats:
            idless = (feats["item_id"][:, :1] == UNKNOWN).unsqueeze(-1)
        if self.training and self.item_id_dropout > 0 and "item_id" in feats and feats["item_id"].shape[0]:
            id_hit = self._hit(feats["item_id"], self.item_id_dropout)
        for s in self.item_specs:
            idx = feats[s.name]
            if s.name == "item_id" and id_hit is not None:
                idx = torch.where(id_hit, torch.full_like(idx, UNKNOWN), idx)
            elif self.training and idx.shape[0] and s.name != "item_id":
                idx = self._drop(idx, self.code_dropout)
                private = feats.get(f"private_{s.name}")
                if private is not None and id_hit is not None:
                    idx = torch.where(id_hit[:, :1] & private, torch.full_like(idx, UNKNOWN), idx)
            e = lookup(self.item[s.table or s.name], idx) if s.rows else 0.0   # [U, w, d]
            if s.content:   # project each distinct code once: [codes, d] x W, not [U, w, d] x W
                codes, where = torch.unique(idx, return_inverse=True)    # PAD / OOV content rows are 0
                projected = self.content_proj[s.name](getattr(self, f"content_{s.name}").index_select(0, codes))
                e = e + gather(projected, where)
            if idless is not None and s.name != "item_id":
                e = torch.where(idless, e.detach(), e)
            if self.training and self.embedding_l2 > 0:
                sq = (e * e * (idx > PAD).unsqueeze(-1)).sum()            # padding slots read nothing
                self._sq = sq if self._sq is None else self._sq + sq
            if s.pooling == "none":
                parts.append(e[:, 0])
            else:
                keep = (idx > 0).unsqueeze(-1)                            # padding codes count 0
                pooled = (e * keep).sum(1)
                parts.append(pooled / keep.sum(1).clamp(min=1) if s.pooling == "mean" else pooled)
        for i, proj in enumerate(self.dense_proj):
            parts.append(proj(feats[f"dense_{i}"]))
        return torch.cat(parts, dim=1)

    @staticmethod
    def _drop(idx: torch.Tensor, rate: float) -> torch.Tensor:
        """Replace known indices (>= 2) with UNKNOWN with probability ``rate`` (padding stays)."""
        if rate <= 0:
            return idx
        return torch.where(RankModel._hit(idx, rate), torch.full_like(idx, UNKNOWN), idx)

    @staticmethod
    def _hit(idx: torch.Tensor, rate: float) -> torch.Tensor:
        """bool like ``idx``: known indices (>= 2) drawn with probability ``rate``."""
        return (torch.rand(idx.shape, device=idx.device) < rate) & (idx > UNKNOWN)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch: ``user`` [B], ``target`` [B], one [B, N] row matrix per sequence spec, ``counts``
        [B, C]; rows index the model's tables, or ``items`` (a ``row_features``-like dict of a
        small local table) when given."""
        target = batch["target"]
        seqs = [batch[s.name] for s in self.seq_specs]
        rows = torch.cat([target.unsqueeze(1), *seqs], 1)
        local = batch.get("items")
        if local is None:
            uniq, inv = torch.unique(rows, return_inverse=True)               # the rows this batch touches
            table = self.item_vectors(self.row_features(uniq))
        else:
            inv, table = rows, self.item_vectors(local)
        tgt = table.index_select(0, inv[:, 0])
        user = batch["user"]
        if self.training and self.user_id_dropout > 0:
            user = self._drop(user, self.user_id_dropout)
        user_emb = lookup(self.user, user)
        parts = [user_emb, tgt]
        self.penalty = None
        if self.training and self.embedding_l2 > 0:
            sq = (user_emb * user_emb).sum() + (self._sq if self._sq is not None else 0.0)
            self.penalty = self.embedding_l2 * sq / len(user)
        col = 1
        for seq, att in zip(seqs, self.attention):
            n = seq.shape[1]
            parts.append(att(tgt, table, inv[:, col:col + n], seq > 0))
            col += n
        for j, emb in enumerate(self.count):
            parts.append(gather(emb.weight, batch["counts"][:, j]))
        x = torch.cat(parts, dim=1)
        if self.towers == "mmoe":
            experts = torch.stack([e(x) for e in self.experts], 1)                 # [B, E, H]
            gates = self.gates(x).view(len(x), self.n_tasks, -1).softmax(-1)      # [B, T, E]
            mixed = torch.bmm(gates, experts)                                      # [B, T, H]
            return torch.cat([h(mixed[:, t]) for t, h in enumerate(self.heads)], 1)
        return self.head(self.bottom(x))
