"""Rank fixtures: the real ml-100k run up to quantize, and a tiny slice of it for subprocess tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qarm.io import read_parquet, write_parquet

UPSTREAM = ["prepare", "pairs", "align", "quantize"]


@pytest.fixture(scope="session")
def ml_run(pipeline_run) -> Path:
    """Real ml-100k (tests/configs/ml100k-fast.yaml) with prepare..quantize done."""
    return pipeline_run("ml100k-fast", UPSTREAM)


@pytest.fixture()
def tiny_run(ml_run, tmp_path) -> Path:
    """The real run's items, codes and embeddings with the events of one user in ten."""
    out = tmp_path / "tiny"
    out.mkdir()
    for name in ("items.parquet", "codes.parquet", "emb_raw.npy", "emb_aligned.npy"):
        (out / name).write_bytes((ml_run / name).read_bytes())
    events = read_parquet(ml_run / "events.parquet")
    write_parquet(out / "events.parquet", events[events["user_id"].to_numpy() % 10 == 0].reset_index(drop=True))
    return out


def tiny_overrides(variant: str, epochs: int) -> list[str]:
    return [f"rank.variants=[{variant}]", "rank.seeds=[0]", f"rank.epochs={epochs}", "rank.patience=0",
            "rank.threads=1", "rank.batch_size=256", "rank.dnn_hidden=[64, 32]"]


def brute_history(users: np.ndarray, ts: np.ndarray, items: np.ndarray, positive: np.ndarray,
                  u: int, t: int, n: int) -> list[int]:
    """The last ``n`` positive items of user ``u`` strictly before ``t`` (event order), by a plain loop."""
    out = [int(i) for uu, tt, i, p in zip(users, ts, items, positive) if p and uu == u and tt < t]
    return out[-n:]
