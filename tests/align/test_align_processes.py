"""Real processes: SIGKILL mid-training then rerun == uninterrupted run; 2-rank gloo DDP == 1 process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import torch
from align_helpers import TEST_CONFIGS, copy_inputs

# small and fast: 384 pairs in batches of 64, tiny per-epoch work; dropout off so ranks match exactly
TINY = ["align.max_pairs=384", "align.batch_size=64", "align.hidden=64"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _cmd(run, sets, torchrun: bool = False) -> list[str]:
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if torchrun \
        else [sys.executable]
    args = head + ["-m", "qarm.align", str(TEST_CONFIGS / "demo-fast.yaml"), "--out", str(run)]
    for s in sets:
        args += ["--set", s]
    return args


def _run(run, sets, torchrun: bool = False) -> dict:
    done = subprocess.run(_cmd(run, sets, torchrun), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((run / "metrics.json").read_text())["align"]


def test_sigkill_mid_training_then_rerun_matches_uninterrupted(demo_run, tmp_path):
    sets = TINY + ["align.epochs=8"]
    ref_dir = copy_inputs(demo_run, tmp_path / "ref", with_cache=True)
    ref = _run(ref_dir, sets)
    run = copy_inputs(demo_run, tmp_path / "killed", with_cache=True)
    ckpt = run / "align" / "checkpoint.pt"
    proc = subprocess.Popen(_cmd(run, sets), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 500
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_epochs = torch.load(ckpt, weights_only=False)["epoch"]
    assert 1 <= done_epochs < 8 and not (run / "emb_aligned.npy").exists()
    resumed = _run(run, sets)
    assert resumed["epochs_resumed"] >= 1
    for key in ("aligned.recall@10", "aligned.recall@50", "aligned.business_nmi", "final_loss"):
        assert resumed[key] == ref[key], key
    np.testing.assert_allclose(np.load(run / "emb_aligned.npy"), np.load(ref_dir / "emb_aligned.npy"), atol=1e-6)


def test_two_rank_gloo_ddp_matches_single_process(demo_run, tmp_path):
    sets = TINY + ["align.epochs=2", "align.modality_dropout=0.0", "align.dropout=0.0"]
    single = _run(copy_inputs(demo_run, tmp_path / "single", with_cache=True), sets)
    ddp_dir = copy_inputs(demo_run, tmp_path / "ddp", with_cache=True)
    ddp = _run(ddp_dir, sets, torchrun=True)
    assert single["world_size"] == 1 and ddp["world_size"] == 2
    assert abs(ddp["final_loss"] - single["final_loss"]) < 1e-4
    # the learnable temperature lives outside the module: its gradient is averaged over the ranks too
    assert abs(ddp["temperature"] - single["temperature"]) < 1e-6, (ddp["temperature"], single["temperature"])
    np.testing.assert_allclose(np.load(ddp_dir / "emb_aligned.npy"),
                               np.load(tmp_path / "single" / "emb_aligned.npy"), atol=2e-4)
    manifest = json.loads((ddp_dir / "manifest.json").read_text())
    assert "align" in manifest["stages"]
