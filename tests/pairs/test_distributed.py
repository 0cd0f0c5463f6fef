"""``torchrun -m qarm.pairs``: two gloo ranks train the U2I model together; rank 0 writes the stage."""

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from qarm.io import read_npy, write_parquet
from qarm.runner import RunDir
from .test_inputs import tiny_world


@pytest.mark.slow
@pytest.mark.parametrize("sparse", [False, True])
def test_torchrun_two_gloo_ranks(tmp_path, sparse):
    """Dense tables (DDP), and ``pairs.u2i_sparse`` (sparse gradients gathered by
    ``qarm.distributed.all_reduce_gradients``; the history padding row never gets one)."""
    torchrun = shutil.which("torchrun")
    assert torchrun, "torchrun (installed with torch) is not on PATH"
    items, events = tiny_world(n_users=60, n_items=40)
    run = RunDir(tmp_path / "run")
    write_parquet(run / "items.parquet", items)
    write_parquet(run / "events.parquet", events)
    config = tmp_path / "cfg.yaml"
    config.write_text("name: ddp\npairs:\n  u2i_epochs: 2\n  u2i_dim: 8\n  u2i_batch_size: 64\n  device: cpu\n"
                      f"  u2i_sparse: {str(sparse).lower()}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "qarm.pairs", str(config),
                          "--out", str(run.path)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())["pairs"]
    assert m["n_pairs"] > 0 and "u2i_recall@10" in m
    assert read_npy(run / "pairs" / "u2i_item_emb.npy").shape == (40, 8)
    assert len(pd.read_parquet(run / "pairs.parquet")) == m["n_pairs"]
