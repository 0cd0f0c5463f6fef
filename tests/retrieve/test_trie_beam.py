"""Prefix trie and constrained beam search: exact against brute force, and never an item that does not exist."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from qarm.errors import DataError
from qarm.retrieve.tokens import TokenSpace, add_dedup
from qarm.retrieve.trie import CodeTrie, constrained_beam_search


def _table_step(tables: list[dict[tuple, np.ndarray]]):
    """A step function whose log-probs depend on the whole prefix (looked up per beam)."""
    def step(prefix: torch.Tensor, depth: int) -> torch.Tensor:
        Q, B, _ = prefix.shape
        out = np.stack([[tables[depth][tuple(prefix[q, b].tolist())] for b in range(B)] for q in range(Q)])
        return torch.from_numpy(out)
    return step


def _random_tables(sizes, seed):
    rng = np.random.default_rng(seed)
    tables = []
    for d, v in enumerate(sizes):
        tab = {}
        for prefix in itertools.product(*[range(s) for s in sizes[:d]]):
            logits = rng.normal(size=v) * 2
            tab[prefix] = (logits - np.log(np.exp(logits).sum())).astype(np.float32)
        tables.append(tab)
    return tables


def test_add_dedup_makes_tuples_unique_in_item_order():
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
    out = add_dedup(codes)
    np.testing.assert_array_equal(out[:, 2], [0, 0, 1, 2, 0])
    assert len(np.unique(out, axis=0)) == len(out)
    space = TokenSpace(out)
    assert space.sizes == [2, 3, 3] and space.vocab == 1 + 8
    np.testing.assert_array_equal(space.tokens(out[0]), [1 + 1, 1 + 2 + 2, 1 + 5 + 0])


def test_trie_rejects_colliding_tuples():
    with pytest.raises(DataError, match="dedup"):
        CodeTrie(np.array([[0, 1], [0, 1]]))


def test_beam_equals_brute_force_when_beam_covers_catalogue():
    rng = np.random.default_rng(0)
    sizes = [3, 4, 3]
    all_tuples = np.array(list(itertools.product(*[range(s) for s in sizes])))
    codes = all_tuples[np.sort(rng.choice(len(all_tuples), 17, replace=False))]  # a sparse catalogue
    codes = codes[rng.permutation(len(codes))]  # item rows in no particular code order
    trie = CodeTrie(codes)
    tables = _random_tables(sizes, 1)
    # trie sizes follow the codes present; pad the tables' last dims to them
    step = _table_step([{k: v[:trie.sizes[d]] for k, v in t.items()} for d, t in enumerate(tables)])
    items, scores = constrained_beam_search(step, trie.to(torch.device("cpu")), 1, beam_size=len(codes))
    exact = np.array([sum(tables[d][tuple(c[:d])][c[d]] for d in range(3)) for c in codes])
    np.testing.assert_array_equal(items[0].numpy(), np.argsort(-exact, kind="stable"))
    np.testing.assert_allclose(scores[0].numpy(), np.sort(exact)[::-1], rtol=1e-5)


@pytest.mark.parametrize("beam", [1, 5, 40])
def test_constrained_decoding_never_returns_a_nonexistent_item(beam):
    rng = np.random.default_rng(beam)
    n = 30
    codes = add_dedup(rng.integers(0, [4, 5, 6], size=(n, 3)))
    trie = CodeTrie(codes).to(torch.device("cpu"))
    banned = torch.zeros(8, n, dtype=torch.bool)
    banned[:, :10] = True  # e.g. the users' histories

    def step(prefix: torch.Tensor, depth: int) -> torch.Tensor:  # any distribution over the level's codes
        g = torch.Generator().manual_seed(depth * 100 + prefix.shape[2])
        return torch.log_softmax(torch.randn(*prefix.shape[:2], trie.sizes[depth], generator=g) * 3, -1)

    items, scores = constrained_beam_search(step, trie, 8, beam, banned)
    got = items.numpy()
    valid = got[got >= 0]
    assert valid.size and valid.min() >= 10 and valid.max() < n  # existing, never banned
    for row, sc in zip(got, scores.numpy()):
        live = row[row >= 0]
        assert len(set(live.tolist())) == len(live)  # no item twice
        assert (np.diff(sc[np.isfinite(sc)]) <= 1e-6).all()  # best first
        assert len(live) == min(beam, n - 10)  # banned subtrees are pruned: no slot is lost to them
