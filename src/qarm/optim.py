"""Optimizers whose step costs O(batch) on embedding tables of catalogue size.

Dense Adam rewrites every row of every table each step (and the dense embedding gradient is a
zero-filled [rows, dim] tensor): at millions of items that is the step's whole cost. Marking the
large tables ``sparse=True`` and training them with row-wise (lazy) Adam moves only the rows a
batch touched; every other parameter keeps dense Adam.
"""

from __future__ import annotations

import torch


class JointOptimizer:
    """Several optimizers stepped, zeroed and checkpointed as one (dense Adam + SparseAdam)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)


def adam_with_sparse_tables(params: list[torch.nn.Parameter], tables: list[torch.nn.Parameter], lr: float,
                            weight_decay: float = 0.0) -> "torch.optim.Optimizer | JointOptimizer":
    """Adam over ``params``; the parameters in ``tables`` (weights of ``sparse=True`` embeddings,
    which receive sparse gradients) get ``torch.optim.SparseAdam`` instead. ``weight_decay`` applies
    to the dense part only (lazy Adam has none). No tables: plain Adam, as before."""
    if not tables:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    dense = [p for p in params if all(p is not t for t in tables)]
    optimizers: list[torch.optim.Optimizer] = [torch.optim.SparseAdam(tables, lr=lr)]
    if dense:
        optimizers.insert(0, torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay))
    return JointOptimizer(optimizers)
