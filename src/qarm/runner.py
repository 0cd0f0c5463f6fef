"""Stage runner: runs pipeline stages in a run directory, caching them through a manifest.

Each stage reads earlier stages' artifacts from the run directory and writes its own there.
``manifest.json`` records, per stage, the hash of the config sections it depends on, the hashes
of its inputs and outputs, the package version, wall time and row counts. A stage whose config
and inputs are unchanged (and whose outputs are intact) is skipped; ``force`` reruns it.
"""

from __future__ import annotations

import importlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from qarm import __version__
from qarm.config import Config
from qarm.errors import QarmError, StageInputError
from qarm.io import path_sha256, read_json, read_parquet, write_json


@dataclass(frozen=True)
class Stage:
    """A pipeline stage described as data.

    ``func`` is ``"module:function"`` with signature ``(cfg: Config, run: RunDir) -> dict``;
    the dict it returns is stored under ``metrics_key`` in ``metrics.json``.
    """

    name: str
    func: str
    sections: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    metrics_key: str
    reads: str
    writes: str

    def load(self) -> Callable[[Config, "RunDir"], dict[str, Any]]:
        module, _, attr = self.func.partition(":")
        return getattr(importlib.import_module(module), attr)


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "qarm.data.stage:run_prepare", ("data", "split", "engine"), (),
          ("items.parquet", "events.parquet", "data"), "prepare",
          "the raw data named by the config's data section (synthetic, MovieLens, or Parquet/CSV files)",
          "items.parquet, events.parquet (with split and cold flags), data/ (media, ground truth)"),
    Stage("pairs", "qarm.pairs.stage:run_pairs", ("pairs", "engine"), ("items.parquet", "events.parquet"),
          ("pairs.parquet", "pairs"), "pairs",
          "items.parquet, events.parquet (train split only)",
          "pairs.parquet (trigger_id, target_id, source, score), pairs/ (U2I item embeddings)"),
    Stage("align", "qarm.align.stage:run_align", ("align",), ("items.parquet", "events.parquet", "pairs.parquet"),
          ("emb_raw.npy", "emb_aligned.npy", "align"), "align",
          "items.parquet (content), events.parquet (valid-split pairs for evaluation), pairs.parquet",
          "emb_raw.npy, emb_aligned.npy (rows in items.parquet order), align/ (encoder, checkpoints)"),
    Stage("quantize", "qarm.quant.stage:run_quantize", ("quantize",), ("items.parquet", "emb_raw.npy", "emb_aligned.npy"),
          ("codes.parquet", "quant"), "quantize",
          "items.parquet, emb_aligned.npy (or emb_raw.npy)",
          "codes.parquet (item_id, vq, rq), quant/ (RQ codebooks, VQ pool)"),
    Stage("train", "qarm.rank.stage:run_train", ("rank",),
          ("items.parquet", "events.parquet", "emb_raw.npy", "emb_aligned.npy", "codes.parquet"),
          ("rank",), "rank",
          "items.parquet, events.parquet, emb_raw.npy, emb_aligned.npy, codes.parquet",
          "rank/ (one model per variant and seed, predictions), metrics under 'rank'"),
    Stage("retrieve", "qarm.retrieve.stage:run_retrieve", ("retrieve", "quantize"),
          ("items.parquet", "events.parquet", "codes.parquet", "emb_raw.npy"),
          ("retrieve",), "retrieve",
          "items.parquet, events.parquet, codes.parquet (RQ codes), emb_raw.npy (quantised here for raw codes)",
          "retrieve/ (checkpoints, best weights, raw-code quantiser), metrics under 'retrieve' "
          "(leave-one-out Recall/NDCG@K of generative retrieval, SASRec, popularity)"),
    Stage("report", "qarm.report.stage:run_report", ("report",), ("metrics.json",),
          ("report.html",), "report",
          "metrics.json and the artifacts of every earlier stage",
          "report.html (self-contained, plots embedded)"),
)
STAGE_BY_NAME = {s.name: s for s in STAGES}


class RunDir:
    """A run directory: artifact paths, cached table loads and the metrics file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, Any] = {}

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def require(self, name: str, stage: str) -> Path:
        p = self.path / name
        if not p.exists():
            raise StageInputError(f"{p} is missing: run the '{stage}' stage first (qarm run CONFIG --out {self.path})")
        return p

    def items(self):
        """items.parquet as a DataFrame, sorted by item_id (row i = embedding row i)."""
        if "items" not in self._cache:
            self._cache["items"] = read_parquet(self.require("items.parquet", "prepare"))
        return self._cache["items"]

    def events(self):
        if "events" not in self._cache:
            self._cache["events"] = read_parquet(self.require("events.parquet", "prepare"))
        return self._cache["events"]

    def metrics(self) -> dict[str, Any]:
        return read_json(self.path / "metrics.json", default={})

    def set_metrics(self, key: str, value: dict[str, Any]) -> None:
        metrics = self.metrics()
        metrics[key] = value
        write_json(self.path / "metrics.json", metrics)

    def manifest(self) -> dict[str, Any]:
        return read_json(self.path / "manifest.json", default={"stages": {}})

    def subdir(self, name: str) -> Path:
        p = self.path / name
        p.mkdir(parents=True, exist_ok=True)
        return p


def _row_count(path: Path) -> int | None:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        if path.suffix == ".npy":
            return int(np.load(path, mmap_mode="r").shape[0])
    except Exception:  # a row count is informative only
        return None
    return None


def _hashes(run: RunDir, names: Sequence[str]) -> dict[str, str | None]:
    out = {}
    for n in names:
        p = run / n
        out[n] = path_sha256(p) if p.exists() else None
    return out


def is_fresh(cfg: Config, run: RunDir, stage: Stage) -> bool:
    """True when the manifest says ``stage`` ran with this config and these inputs, outputs intact."""
    entry = run.manifest()["stages"].get(stage.name)
    if not entry or entry.get("config_hash") != cfg.section_hash(stage.sections):
        return False
    if entry.get("inputs") != _hashes(run, stage.inputs):
        return False
    return entry.get("outputs") == _hashes(run, stage.outputs)


def _remove_stale_temp_files(root: Path) -> None:
    """Temp files left by a killed write (``qarm.io.atomic_path``) are never trusted; clear them."""
    for tmp in root.rglob(".*.tmp"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _summary(metrics: dict[str, Any], limit: int = 6) -> str:
    parts = []
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
        if len(parts) >= limit:
            break
    return ", ".join(parts)


def run_stages(cfg: Config, out: str | Path, stages: Sequence[str] | None = None, force: bool = False,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``stages`` (default: all, in pipeline order) in run directory ``out``.

    Returns the metrics of the whole run directory.
    """
    names = list(stages) if stages else [s.name for s in STAGES]
    unknown = [n for n in names if n not in STAGE_BY_NAME]
    if unknown:
        raise QarmError(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGE_BY_NAME)}")
    order = [s for s in STAGES if s.name in names]
    run = RunDir(out)
    _remove_stale_temp_files(run.path)
    write_json(run / "config.json", cfg.to_dict())
    for stage in order:
        if not force and is_fresh(cfg, run, stage):
            log(f"[{stage.name}] up to date (config and inputs unchanged); skipped")
            continue
        for name in stage.inputs:
            if name != "metrics.json" and not (run / name).exists():
                producer = next(s.name for s in STAGES if name in s.outputs)
                raise StageInputError(f"stage '{stage.name}' needs {run / name}: run the '{producer}' stage first")
        inputs = _hashes(run, stage.inputs)
        import torch  # every stage imports it anyway; here only to record the thread count results depend on

        threads = torch.get_num_threads()
        t0 = time.perf_counter()
        metrics = stage.load()(cfg, run)
        wall = time.perf_counter() - t0
        if metrics:  # the report stage returns none, so it never makes its own input stale
            run.set_metrics(stage.metrics_key, metrics)
        manifest = run.manifest()
        manifest["stages"][stage.name] = {
            "config_hash": cfg.section_hash(stage.sections),
            "inputs": inputs,
            "outputs": _hashes(run, stage.outputs),
            "version": __version__,
            "wall_s": round(wall, 3),
            "torch_threads": threads,  # same config, seed and thread count: same bytes
            "rows": {n: _row_count(run / n) for n in stage.outputs if (run / n).is_file()},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(run / "manifest.json", manifest)
        log(f"[{stage.name}] done in {wall:.1f}s: {_summary(metrics)}")
    return run.metrics()


def distributed_stage_main(name: str, argv: list[str] | None = None, description: str = "",
                           module: str | None = None) -> int:
    """``torchrun --nproc_per_node N -m qarm.<module> CONFIG --out RUN [--set k=v] [--force]``
    (``module`` defaults to the stage ``name``).

    Every rank joins one process group with the backend that the stage's config section's
    ``device`` calls for
    (``qarm.distributed``). Rank 0 runs the stage through the runner (manifest, metrics,
    artifacts); the other ranks run the stage function alongside it, training on their shard of
    every batch. Without torchrun (no ``WORLD_SIZE``) this is the plain stage. Returns the exit code.
    """
    import argparse
    import sys

    import torch.distributed as dist

    from qarm.config import load_config
    from qarm.distributed import init_distributed, resolve_device, world

    parser = argparse.ArgumentParser(prog=f"python -m qarm.{module or name}", description=description)
    parser.add_argument("config")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    stage = STAGE_BY_NAME[name]
    try:
        cfg = load_config(args.config, args.overrides)
        section = stage.sections[0]     # the stage's own section: pairs, align, rank
        init_distributed(resolve_device(getattr(cfg, section).device, f"{section}.device"))
        rank, size = world()
        # every rank must agree on skipping, or the others would wait for a rank 0 that never trains
        skip = [rank == 0 and not args.force and is_fresh(cfg, RunDir(args.out), stage)]
        if size > 1:
            dist.broadcast_object_list(skip, src=0)
        if skip[0]:
            if rank == 0:
                print(f"[{name}] up to date (config and inputs unchanged); skipped")
        elif rank == 0:
            run_stages(cfg, args.out, stages=[name], force=True)
        else:
            stage.load()(cfg, RunDir(args.out))
        return 0
    except QarmError as exc:
        print(f"qarm.{module or name}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
