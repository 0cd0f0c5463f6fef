"""Rank fixtures: the real ml-100k run up to quantize, and a tiny slice of it for subprocess tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from qarm.io import read_parquet, write_parquet

UPSTREAM = ["prepare", "pairs", "align", "quantize"]


@pytest.fixture(scope="session")
def ml_run(pipeline_run) -> Path:
    """Real ml-100k (tests/configs/ml100k-fast.yaml) with prepare..quantize done."""
    return pipeline_run("ml100k-fast", UPSTREAM)


@pytest.fixture()
def tiny_run(ml_run, tmp_path) -> Path:
    """The real run's items, codes and embeddings with the events of one user in twenty."""
    out = tmp_path / "tiny"
    out.mkdir()
    for name in ("items.parquet", "codes.parquet", "emb_raw.npy", "emb_aligned.npy"):
        (out / name).write_bytes((ml_run / name).read_bytes())
    events = read_parquet(ml_run / "events.parquet")
    write_parquet(out / "events.parquet", events[events["user_id"].to_numpy() % 20 == 0].reset_index(drop=True))
    return out
