"""The shared id -> row lookup and device / process-group helpers."""

import numpy as np
import pytest
import torch

from qarm.distributed import backend_for, check_device, resolve_device, shard, world
from qarm.errors import ConfigError, DataError
from qarm.lookup import IdIndex


def test_id_index_rows_missing_and_offset():
    idx = IdIndex(np.array([30, 10, 20]))
    assert idx.ids.tolist() == [10, 20, 30]
    # rows are positions in the array as given, not in its sorted copy
    assert idx.rows(np.array([20, 99, 10]), missing=-1).tolist() == [2, -1, 1]
    assert idx.rows(np.array([[30], [5]]), missing=1, offset=2).tolist() == [[2], [1]]
    assert IdIndex(np.array([10, 20, 30]), assume_sorted=True).rows(np.array([30, 10])).tolist() == [2, 0]
    assert idx.contains(np.array([10, 11])).tolist() == [True, False]
    with pytest.raises(DataError, match="not in the catalogue, first 99"):
        idx.rows(np.array([10, 99]))


def test_id_index_rejects_duplicates_and_handles_empty():
    with pytest.raises(DataError, match="duplicate item_id"):
        IdIndex(np.array([1, 2, 2]))
    empty = IdIndex(np.array([], np.int64))
    assert empty.rows(np.array([3, 4]), missing=7).tolist() == [7, 7]


def test_device_selection_and_backend():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda", where="rank.device")
    for bad in ("gpu", "cuda:x", "", "CPU"):
        with pytest.raises(ConfigError, match="is not one of auto, cpu, cuda, cuda:N"):
            check_device(bad)
    assert backend_for(torch.device("cuda", 0)) == "nccl"
    assert backend_for(torch.device("cpu")) == "gloo"


def test_world_and_shard_outside_torchrun():
    assert world() == (0, 1)
    assert shard(10) == slice(0, 10)


def test_block_rows_bounds_cells_and_blocking_never_changes_recall(monkeypatch):
    from qarm.align.evaluate import recall_at_k
    from qarm.blocks import SCORE_BLOCK_CELLS, block_rows

    assert block_rows(1_000_000, 2048) * 1_000_000 <= SCORE_BLOCK_CELLS      # 32 rows, not 8 GiB
    assert block_rows(1_682, 2048) == 2048                                  # small catalogues: unchanged
    assert block_rows(10**12, 2048) == 1 and block_rows(0, 7) == 7
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    trig, targ = rng.integers(0, 300, 200), rng.integers(0, 300, 200)
    whole = recall_at_k(emb, trig, targ, ks=(5, 20), chunk=2048)
    monkeypatch.setattr("qarm.align.evaluate.block_rows", lambda n, rows: block_rows(n, rows, cells=7 * 300))
    assert recall_at_k(emb, trig, targ, ks=(5, 20), chunk=2048) == whole     # in 7-row blocks


def test_query_cap_bounds_the_scores_of_an_evaluation():
    from qarm.blocks import query_cap

    assert query_cap(50_000, 1_682) == 50_000          # real data sets: the figures are unchanged
    assert query_cap(50_000, 100_000) == 50_000
    assert query_cap(50_000, 1_000_000) == 5_000       # 5e9 scores, not 5e10
    assert query_cap(0, 1_000_000) == 5_000            # "all" is budgeted too
    assert query_cap(50_000, 1_000_000, max_scores=0) == 50_000 and query_cap(0, 10, 0) == 0
    assert query_cap(7, 10**12) == 1


class _SparseNet(torch.nn.Module):
    """A sparse table every rank reads, a sparse table only rank 0 reads, a dense layer, and a
    layer no rank uses."""

    def __init__(self) -> None:
        super().__init__()
        self.items = torch.nn.Embedding(50, 4, sparse=True)
        self.rare = torch.nn.Embedding(10, 4, sparse=True)
        self.out = torch.nn.Linear(4, 1)
        self.unused = torch.nn.Linear(4, 1)

    def forward(self, rows: torch.Tensor, rare: torch.Tensor | None) -> torch.Tensor:
        x = self.items(rows)
        if rare is not None:
            x = x + self.rare(rare)
        return self.out(x).square().mean()


def _rank_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    # different row counts, repeats within a rank and rows shared across ranks
    if rank == 0:
        return torch.tensor([1, 2, 2, 7, 40]), torch.tensor([3, 3, 9, 1, 0])
    return torch.tensor([2, 7, 7, 7, 11, 12, 13, 49]), None


def _sync_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from qarm.distributed import data_parallel

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(rank)                        # rank 1 starts from other weights: the broadcast fixes that
    model = _SparseNet()
    net, sync = data_parallel(model, torch.device("cpu"))
    assert net is model                            # sparse tables: no DDP
    net(*_rank_batch(rank)).backward()
    sync()
    torch.save({"state": model.state_dict(),
                "grads": {n: (p.grad.to_dense() if p.grad is not None and p.grad.is_sparse else p.grad)
                          for n, p in model.named_parameters()},
                "sparse": {n: p.grad is not None and p.grad.is_sparse for n, p in model.named_parameters()}},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_sparse_and_dense_gradients_average_over_two_gloo_processes(tmp_path):
    """``data_parallel`` on a model with sparse tables: rank 0's weights everywhere, and after
    ``sync`` every rank holds the mean of the ranks' gradients (sparse ones still sparse), the
    same on both; a table only one rank read averages with zeros; a layer nobody used has none."""
    torch.multiprocessing.spawn(_sync_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    reference = _SparseNet()
    expected: dict[str, torch.Tensor] = {}
    for r in range(2):                             # each rank's gradient, one process, from rank 0's weights
        reference.zero_grad(set_to_none=True)
        reference(*_rank_batch(r)).backward()
        for n, p in reference.named_parameters():
            if p.grad is not None:
                g = p.grad.to_dense() if p.grad.is_sparse else p.grad
                expected[n] = expected.get(n, torch.zeros_like(g)) + g / 2
    for n, t in reference.state_dict().items():
        assert torch.equal(got[1]["state"][n], t) and torch.equal(got[0]["state"][n], t), n
    for n in ("items.weight", "rare.weight", "out.weight", "out.bias"):
        assert torch.equal(got[0]["grads"][n], got[1]["grads"][n]), n
        torch.testing.assert_close(got[0]["grads"][n], expected[n], rtol=1e-6, atol=1e-7)
    assert got[0]["sparse"]["items.weight"] and got[1]["sparse"]["rare.weight"]
    assert not got[0]["sparse"]["out.weight"]
    assert got[0]["grads"]["unused.weight"] is None and got[1]["grads"]["unused.bias"] is None
    assert got[1]["grads"]["rare.weight"][3].abs().sum() > 0   # rank 1 never read it, and holds rank 0's half


class _TableNet(torch.nn.Module):
    def __init__(self, fill: float) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.register_buffer("table", torch.full((8, 4), fill), persistent=False)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.lin(self.table[rows]).mean()


def _buffer_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from qarm.distributed import data_parallel

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    model = _TableNet(float(rank))
    net, _ = data_parallel(model, torch.device("cpu"))
    synced = model.table.clone()                       # rank 0's table everywhere after the wrap
    model.table.fill_(10.0 + rank)                     # a rank-local change: a forward must not undo it
    net(torch.tensor([0, 3])).backward()
    torch.save({"synced": synced, "after": model.table.clone()}, f"{out}/buf{rank}.pt")
    dist.destroy_process_group()


def test_ddp_syncs_buffers_once_not_at_every_forward(tmp_path):
    """The ranker's buffers are its item tables (O(catalogue)): ``data_parallel``'s DDP copies them
    from rank 0 once, at the wrap, and never again at a forward."""
    torch.multiprocessing.spawn(_buffer_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    got = [torch.load(tmp_path / f"buf{r}.pt") for r in range(2)]
    assert torch.equal(got[1]["synced"], torch.zeros(8, 4))
    assert torch.equal(got[1]["after"], torch.full((8, 4), 11.0)) and torch.equal(got[0]["after"], torch.full((8, 4), 10.0))
