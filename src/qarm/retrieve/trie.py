"""Prefix trie of the catalogue's code tuples and beam search constrained to it.

The trie is flat arrays, one layer per depth: the nodes of depth d+1 are the distinct length-(d+1)
prefixes in lexicographic order, so the children of a depth-d node are one contiguous range. A beam
can therefore only ever extend a prefix that some catalogue item has; at the last depth every node is
exactly one item, so decoding returns catalogue items and nothing else.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from qarm.errors import DataError


class CodeTrie:
    """Trie over unique code tuples int [n, T] (level-local codes); leaf j is item row ``leaf_item[j]``."""

    def __init__(self, codes: np.ndarray) -> None:
        codes = np.asarray(codes, np.int64)
        if codes.ndim != 2 or len(codes) == 0:
            raise DataError(f"expected a non-empty code table [n, T], got shape {codes.shape}")
        n, T = codes.shape
        order = np.lexsort(codes.T[::-1])
        srt = codes[order]
        if n > 1:
            dup = np.flatnonzero((srt[1:] == srt[:-1]).all(axis=1))
            if dup.size:
                raise DataError(f"items {int(order[dup[0]])} and {int(order[dup[0] + 1])} share the code tuple "
                                f"{srt[dup[0]].tolist()}: add a dedup level first (qarm.retrieve.tokens.add_dedup)")
        self.depth = T
        self.sizes = [int(c) + 1 for c in codes.max(axis=0)]
        self.child_start: list[np.ndarray] = []  # per depth d: int64 [n_nodes_d + 1] into depth d+1 nodes
        self.child_code: list[np.ndarray] = []   # per depth d: int64 [n_nodes_{d+1}] the code on each edge
        self.parent: list[np.ndarray] = []       # per depth d: int64 [n_nodes_{d+1}] parent node at depth d
        self.n_leaves: list[np.ndarray] = []     # per depth d+1: int64 [n_nodes_{d+1}] items below each node
        parent = np.zeros(n, np.int64)           # node (at the current depth) of every sorted row
        n_nodes = 1
        for d in range(T):
            new = np.r_[True, (srt[1:, :d + 1] != srt[:-1, :d + 1]).any(axis=1)] if n > 1 else np.ones(1, bool)
            node = np.cumsum(new) - 1  # depth d+1 node of every sorted row
            node_parent = parent[new]
            self.child_start.append(np.searchsorted(node_parent, np.arange(n_nodes + 1)).astype(np.int64))
            self.child_code.append(srt[new, d])
            self.parent.append(node_parent)
            parent, n_nodes = node, int(new.sum())
        self.leaf_item = order.astype(np.int64)  # leaves are the sorted rows themselves
        self.n_items = n
        below = np.ones(n, np.int64)
        for d in range(T - 1, -1, -1):
            self.n_leaves.insert(0, below)
            below = np.bincount(self.parent[d], weights=below, minlength=len(self.child_start[d]) - 1).astype(np.int64)

    def to(self, device: torch.device) -> "_TorchTrie":
        return _TorchTrie(self, device)


class _TorchTrie:
    def __init__(self, trie: CodeTrie, device: torch.device) -> None:
        self.depth, self.sizes, self.n_items = trie.depth, trie.sizes, trie.n_items
        self.child_start = [torch.from_numpy(a).to(device) for a in trie.child_start]
        self.child_code = [torch.from_numpy(a).to(device) for a in trie.child_code]
        self.leaf_item = torch.from_numpy(trie.leaf_item).to(device)
        self.parent = [torch.from_numpy(a).to(device) for a in trie.parent]
        self.n_leaves = [torch.from_numpy(a).to(device) for a in trie.n_leaves]
        self.device = device

    def dead_nodes(self, banned: torch.Tensor) -> list[torch.Tensor]:
        """banned bool [Q, n_items] -> per depth d+1 a bool [Q, n_nodes_{d+1}]: every item below is banned.

        Pruning whole banned subtrees keeps a beam from spending slots on prefixes that can only end on
        banned items, so a user's history costs no result slots."""
        count = banned[:, self.leaf_item].to(torch.int64)  # banned items per leaf node
        dead = []
        for d in range(self.depth - 1, -1, -1):
            dead.insert(0, count >= self.n_leaves[d][None])
            n_up = len(self.child_start[d]) - 1
            count = torch.zeros(count.shape[0], n_up, dtype=torch.int64, device=self.device).index_add_(
                1, self.parent[d], count)
        return dead

    def children(self, depth: int, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For nodes int64 [m] of ``depth``: a map [m, V_depth] code -> child node (-1: no such child)."""
        cs = self.child_start[depth]
        lo, hi = cs[nodes], cs[nodes + 1]
        lens = hi - lo
        out = torch.full((len(nodes), self.sizes[depth]), -1, dtype=torch.long, device=self.device)
        rows = torch.repeat_interleave(torch.arange(len(nodes), device=self.device), lens)
        if rows.numel():
            first = torch.repeat_interleave(lo - torch.cumsum(lens, 0) + lens, lens)
            child = first + torch.arange(rows.numel(), device=self.device)
            out[rows, self.child_code[depth][child]] = child
        return out


StepFn = Callable[[torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def constrained_beam_search(step: StepFn, trie: _TorchTrie, n_queries: int, beam_size: int,
                            banned: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``beam_size`` catalogue items per query by beam search over the trie.

    ``step(prefix, depth)`` gets prefix codes int64 [Q, B, depth] and returns log-probabilities float
    [Q, B, V_depth] of the next level's codes. ``banned`` bool [Q, n_items] (optional) removes items
    (e.g. the user's history). Returns (items int64 [Q, B] item rows, -1 where fewer than
    B items are reachable; scores float32 [Q, B], -inf there), best first. Subtrees whose items are all
    banned are pruned at every depth, so a beam of B finds B unbanned items whenever that many exist.
    """
    dev = trie.device
    Q, B = n_queries, beam_size
    node = torch.zeros(Q, B, dtype=torch.long, device=dev)
    score = torch.full((Q, B), float("-inf"), device=dev)
    score[:, 0] = 0.0  # one live beam at the root, or the top-B would repeat it B times
    dead = trie.dead_nodes(banned) if banned is not None else None
    prefix = torch.zeros(Q, B, 0, dtype=torch.long, device=dev)
    for d in range(trie.depth):
        logp = step(prefix, d).float()
        V = logp.shape[-1]
        if V != trie.sizes[d]:
            raise ValueError(f"step returned {V} codes at depth {d}, the trie has {trie.sizes[d]}")
        child = trie.children(d, node.reshape(-1)).reshape(Q, B, V)
        total = score[:, :, None] + logp
        total = total.masked_fill(child < 0, float("-inf"))
        if dead is not None:  # subtrees holding only banned items (at the last depth: banned items)
            gone = torch.gather(dead[d], 1, child.clamp(min=0).reshape(Q, -1)).reshape(Q, B, V)
            total = total.masked_fill(gone, float("-inf"))
        top, idx = total.reshape(Q, B * V).topk(min(B, B * V), dim=1)
        if top.shape[1] < B:  # fewer candidates than beams (tiny tries): pad with dead beams
            pad = B - top.shape[1]
            top = torch.cat([top, torch.full((Q, pad), float("-inf"), device=dev)], 1)
            idx = torch.cat([idx, torch.zeros(Q, pad, dtype=torch.long, device=dev)], 1)
        parent, code = idx // V, idx % V
        new_node = torch.gather(child.reshape(Q, B * V), 1, idx)
        alive = torch.isfinite(top) & (new_node >= 0)
        node = torch.where(alive, new_node, torch.zeros_like(new_node))
        score = torch.where(alive, top, torch.full_like(top, float("-inf")))
        prefix = torch.cat([torch.gather(prefix, 1, parent[:, :, None].expand(-1, -1, d)), code[:, :, None]], 2)
    items = torch.where(torch.isfinite(score), trie.leaf_item[node], torch.full_like(node, -1))
    return items, score
