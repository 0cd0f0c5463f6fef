"""Fixtures of the align tests: the cached demo-fast / ml100k-fast runs, tiny HF models built from
configs (never downloaded), and copies of a run's inputs for runs with other align settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from align_helpers import copy_inputs, make_tiny_bert, make_tiny_clip


@pytest.fixture(scope="session")
def demo_run(pipeline_run) -> Path:
    return pipeline_run("demo-fast", ["prepare", "pairs", "align"])


@pytest.fixture(scope="session")
def ml_run(pipeline_run, ml100k_path) -> Path:
    return pipeline_run("ml100k-fast", ["prepare", "pairs", "align"])


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture
def demo_copy(demo_run, tmp_path) -> Path:
    """A fresh run directory with demo-fast's prepare and pairs outputs (and its feature cache)."""
    return copy_inputs(demo_run, tmp_path / "run", with_cache=True)
