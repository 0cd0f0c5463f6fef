"""Shared fixtures: the real MovieLens 100K path and cached, incremental pipeline runs.

``pipeline_run(config, stages)`` runs stages into one run directory per (config, overrides),
so the align tests reuse the pairs run, the rank tests reuse the quantize run, and so on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("QARM_ML100K", ROOT.parent / "shared" / "data" / "movielens-100k"))
TEST_CONFIGS = Path(__file__).parent / "configs"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    if not (ML100K / "ml-100k" / "u.data").exists():
        pytest.fail(f"real MovieLens 100K not found at {ML100K}: set QARM_ML100K or place ../shared beside the repo")
    return ML100K


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """``pipeline_run(config_name, stages, overrides=())`` -> run dir Path, stages run (cached)."""
    from qarm.config import load_config
    from qarm.runner import run_stages

    dirs: dict[tuple, Path] = {}

    def run(config: str, stages: list[str], overrides: tuple[str, ...] = ()) -> Path:
        key = (config, tuple(overrides))
        if key not in dirs:
            dirs[key] = tmp_path_factory.mktemp(f"run-{config}")
        path = TEST_CONFIGS / f"{config}.yaml"
        cfg = load_config(path, [f"data.path={ML100K}"] + list(overrides) if config.startswith("ml100k")
                          else list(overrides))
        run_stages(cfg, dirs[key], stages=stages)
        return dirs[key]

    return run
