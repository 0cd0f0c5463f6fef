"""End to end on real MovieLens 100K (reduced epochs) and on the synthetic world.

Runs every stage through the runner, checks that the figures are sane, and that a second run
redoes no finished stage.
"""

from __future__ import annotations

import json
from pathlib import Path

from qarm.config import load_config
from qarm.runner import STAGES, run_stages

ALL_STAGES = [s.name for s in STAGES]


def test_ml100k_reduced_pipeline_end_to_end(pipeline_run, ml100k_path):
    run_dir = pipeline_run("ml100k-fast", ALL_STAGES)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["prepare"]["n_users"] == 943 and metrics["prepare"]["n_items"] == 1682
    assert metrics["pairs"]["n_u2i"] > 0 and metrics["pairs"]["n_i2i"] > 0
    align = metrics["align"]
    assert align["aligned.recall@50"] > align["raw.recall@50"]
    for variant, tasks in metrics["rank"]["variants"].items():
        assert tasks["click"]["auc"]["mean"] > 0.6, (variant, tasks["click"])
    html = (run_dir / "report.html").read_text()
    assert "<img" in html or "<svg" in html
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["stages"]) == set(ALL_STAGES)


def test_demo_world_end_to_end_and_rerun_skips_everything(pipeline_run):
    run_dir = pipeline_run("demo-fast", ALL_STAGES)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["align"]["aligned.business_nmi"] > metrics["align"]["raw.business_nmi"]
    assert (run_dir / "report.html").exists()
    logs: list[str] = []
    run_stages(load_config(Path(__file__).parent / "configs" / "demo-fast.yaml"), run_dir, log=logs.append)
    assert len(logs) == len(ALL_STAGES) and all("up to date" in line for line in logs), logs
