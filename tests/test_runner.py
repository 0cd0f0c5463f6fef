"""Run directory mechanics: manifest caching, atomic writes, and a killed write that leaves no trusted artifact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qarm.config import load_config
from qarm.errors import StageInputError
from qarm.io import read_parquet, write_json, write_npy, write_parquet
from qarm.runner import STAGES, RunDir, is_fresh, run_stages

TESTS = Path(__file__).parent


def test_atomic_writers_roundtrip(tmp_path):
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    write_parquet(tmp_path / "t.parquet", df)
    write_npy(tmp_path / "m.npy", np.eye(3, dtype=np.float32))
    write_json(tmp_path / "j.json", {"k": np.float32(0.5), "n": np.int64(3)})
    assert read_parquet(tmp_path / "t.parquet").equals(df)
    assert np.load(tmp_path / "m.npy").dtype == np.float32
    assert json.loads((tmp_path / "j.json").read_text()) == {"k": 0.5, "n": 3}
    write_json(tmp_path / "nan.json", {"auc": float("nan"), "per_level": [np.float32(1.5), np.inf]})
    assert json.loads((tmp_path / "nan.json").read_text()) == {"auc": None, "per_level": [1.5, None]}
    assert not list(tmp_path.glob(".*.tmp")), "temp files must be renamed away"


def test_write_killed_midway_keeps_previous_artifact(tmp_path):
    """SIGKILL a process in the middle of writing: the old artifact stays intact and readable."""
    target = tmp_path / "events.parquet"
    old = pd.DataFrame({"user_id": np.arange(10), "item_id": np.arange(10)})
    write_parquet(target, old)
    marker = tmp_path / "started"
    script = textwrap.dedent(f"""
        import time, pathlib
        from qarm.io import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"PAR1" + b"x" * 1000)   # half a Parquet file
                fh.flush()
                pathlib.Path({str(marker)!r}).touch()
                time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 30
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "writer subprocess never started writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_parquet(target).equals(old)
    leftovers = list(tmp_path.glob(".events.parquet.*.tmp"))
    assert len(leftovers) == 1  # the half-written temp file is left behind but never trusted


def test_prepare_killed_midway_then_rerun_is_clean(tmp_path):
    """Kill the real prepare stage in a subprocess at several moments; a rerun always ends consistent."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "qarm", "run", str(TESTS / "configs" / "demo-fast.yaml"),
           "--out", str(out), "--stages", "prepare"]
    for delay in (0.5, 1.5, 3.0):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        manifest = RunDir(out).manifest()["stages"]
        if "prepare" in manifest:  # finished before the kill: its recorded outputs must be intact
            assert is_fresh(load_config(TESTS / "configs" / "demo-fast.yaml"), RunDir(out), STAGES[0])
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    items = read_parquet(out / "items.parquet")
    events = read_parquet(out / "events.parquet")
    assert len(items) > 0 and len(events) > 0
    assert set(events["item_id"]).issubset(set(items["item_id"]))
    assert not list(out.glob(".*.tmp")), "stale temp files are cleaned up by the next run"
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert "up to date" in again.stdout


def test_manifest_skips_unchanged_and_reruns_changed(tmp_path):
    cfg = load_config(TESTS / "configs" / "demo-fast.yaml")
    logs: list[str] = []
    run_stages(cfg, tmp_path, stages=["prepare"], log=logs.append)
    entry = RunDir(tmp_path).manifest()["stages"]["prepare"]
    assert entry["rows"]["items.parquet"] > 0 and entry["rows"]["events.parquet"] > 0
    assert entry["version"] and entry["wall_s"] >= 0 and len(entry["config_hash"]) == 16
    metrics = RunDir(tmp_path).metrics()
    assert metrics["prepare"]["n_items"] == entry["rows"]["items.parquet"]

    run_stages(cfg, tmp_path, stages=["prepare"], log=logs.append)
    assert "up to date" in logs[-1]
    run_stages(cfg, tmp_path, stages=["prepare"], force=True, log=logs.append)
    assert "done" in logs[-1]
    changed = load_config(TESTS / "configs" / "demo-fast.yaml", ["split.train_frac=0.7"])
    run_stages(changed, tmp_path, stages=["prepare"], log=logs.append)
    assert "done" in logs[-1]
    # a corrupted output is not trusted
    (tmp_path / "items.parquet").write_bytes(b"garbage")
    assert not is_fresh(changed, RunDir(tmp_path), STAGES[0])


def test_stage_without_inputs_names_the_missing_stage(tmp_path):
    cfg = load_config(TESTS / "configs" / "demo-fast.yaml")
    with pytest.raises(StageInputError, match="prepare"):
        run_stages(cfg, tmp_path, stages=["pairs"])


def test_cli_help_says_what_each_command_reads_and_writes():
    for name in ["prepare", "pairs", "align", "quantize", "train", "report", "run", "demo", "assign", "serve"]:
        out = subprocess.run([sys.executable, "-m", "qarm", name, "--help"], capture_output=True, text=True)
        assert out.returncode == 0
        assert "Reads" in out.stdout or "reads" in out.stdout.lower(), name
        assert "Writes" in out.stdout or "writes" in out.stdout.lower(), name


def test_cli_reports_config_errors_without_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "qarm", "run", "demo", "--out", str(tmp_path),
                          "--set", "rank.epoch=1"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "valid keys" in out.stderr
