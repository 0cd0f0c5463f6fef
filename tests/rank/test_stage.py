"""The train stage on real ml-100k: the ablation table, serving, SIGKILL resume, DDP on 2 processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rank_helpers import tiny_overrides

from qarm.config import load_config
from qarm.rank.predict import load_ranker
from qarm.rank.stage import run_train
from qarm.runner import RunDir, run_stages

CONFIG = Path(__file__).parents[1] / "configs" / "ml100k-fast.yaml"
VARIANTS = ["id", "frozen_mm", "ia_rep", "vq", "rq", "qarm"]


def test_train_stage_writes_the_variant_table_and_a_servable_ranker(ml_run, ml100k_path):
    run_dir = ml_run  # the shared session run: the end-to-end test then finds 'train' up to date
    run_stages(load_config(CONFIG, [f"data.path={ml100k_path}"]), run_dir, stages=["train"])
    rank = json.loads((run_dir / "metrics.json").read_text())["rank"]
    assert set(rank["variants"]) == set(VARIANTS)
    for v in VARIANTS:
        for task in ("click", "like"):
            m = rank["variants"][v][task]
            assert {"auc", "gauc", "logloss", "cold_auc"} <= set(m)
            assert all(set(m[k]) == {"mean", "std"} for k in ("auc", "gauc", "logloss", "cold_auc"))
            assert 0.0 < m["logloss"]["mean"] < 1.0 and not math.isnan(m["cold_auc"]["mean"])
        assert rank["variants"][v]["click"]["auc"]["mean"] > 0.62, (v, rank["variants"][v])
        assert {"0", "1-4", "100+"} <= set(rank["buckets"][v]["click"])
    assert rank["throughput"]["train_samples_per_s"] > 0 and rank["throughput"]["eval_samples_per_s"] > 0
    assert rank["n_empty_history"] > 0 and rank["n_cold_test"] > 0
    # the id variant cannot tell two held-out items apart (both are the OOV id); qarm can, by codes
    items = pd.read_parquet(run_dir / "items.parquet")
    held = items.loc[items["holdout"], "item_id"].to_numpy()[:20].tolist()
    id_scores = load_ranker(run_dir, "id").score([1, 50, 100], held, user_id=5)["click"]
    qarm_scores = load_ranker(run_dir, "qarm").score([1, 50, 100], held, user_id=5)["click"]
    assert np.ptp(id_scores) < 1e-6 < np.ptp(qarm_scores)

    ranker = load_ranker(run_dir, "qarm")
    history, candidates = [1, 50, 100, 181, 258], [1, 2, 3, 300, 1682]
    scores = ranker.score(history, candidates, user_id=1)
    assert set(scores) == {"click", "like"} and scores["click"].shape == (5,)
    assert ((scores["click"] > 0) & (scores["click"] < 1)).all()
    assert np.isfinite(ranker.score([], candidates)["like"]).all()  # empty history, unknown user
    assert not np.allclose(ranker.score(history[:1], candidates)["click"], scores["click"])
    assert load_ranker(run_dir).variant == rank["default_variant"]


def _cmd(out: Path, variant: str, epochs: int) -> list[str]:
    sets = [a for o in tiny_overrides(variant, epochs) for a in ("--set", o)]
    return [sys.executable, "-m", "qarm.rank", str(CONFIG), "--out", str(out), *sets]


def test_resume_after_sigkill_ends_with_identical_metrics(tiny_run, tmp_path):
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for f in tiny_run.iterdir():
        (ref_dir / f.name).write_bytes(f.read_bytes())
    cfg = load_config(CONFIG, tiny_overrides("rq", 2))
    reference = run_train(cfg, RunDir(ref_dir))

    ckpt = tiny_run / "rank" / "rq" / "seed0" / "ckpt.pt"
    proc = subprocess.Popen(_cmd(tiny_run, "rq", 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # after the first epoch's checkpoint, during the second
    proc.wait()
    assert ckpt.exists() and not (tiny_run / "rank" / "rq" / "seed0" / "result.json").exists()
    done = subprocess.run(_cmd(tiny_run, "rq", 2), check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tiny_run / "rank" / "rq" / "seed0" / "result.json").read_text())
    assert result["resumed_from_epoch"] >= 1
    resumed = json.loads((tiny_run / "metrics.json").read_text())["rank"]
    def same(d):  # NaN-safe equality
        return json.dumps(d, sort_keys=True)

    assert same(resumed["variants"]) == same(reference["variants"])
    assert same(resumed["buckets"]) == same(reference["buckets"])


def test_ddp_trains_with_two_cpu_processes(tiny_run):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *_cmd(tiny_run, "qarm", 1)[1:]]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rank = json.loads((tiny_run / "metrics.json").read_text())["rank"]
    assert rank["world_size"] == 2
    assert np.isfinite(rank["variants"]["qarm"]["click"]["auc"]["mean"])
    assert (tiny_run / "rank" / "qarm" / "seed0" / "model.pt").exists()


def test_config_errors_are_clear(tmp_path):
    from qarm.errors import ConfigError

    cfg = load_config(CONFIG, ["rank.variants=[id, bogus]"])
    with pytest.raises(ConfigError, match="bogus"):
        run_train(cfg, RunDir(tmp_path))
