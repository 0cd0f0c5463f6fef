"""The ``prepare`` stage: load a source, validate it, split it, write items/events Parquet.

Sources (``data.source``): ``synthetic`` (:mod:`qarm.data.synthetic`), ``movielens`` (any official
layout, :mod:`qarm.data.movielens`) and ``files`` (Parquet/CSV in the schema, :mod:`qarm.data.files`).
Writes ``items.parquet``, ``events.parquet`` and ``data/`` (synthetic media and ground truth, or a
``source.json`` naming the input files), all through :mod:`qarm.io` (atomic).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from qarm.config import Config
from qarm.data.config import DataConfig
from qarm.data.files import read_table, resolve_file
from qarm.data.item_text import apply_item_text
from qarm.data.items import build_items
from qarm.data.schema import ITEMS_SCHEMA, SPLITS, validate_events
from qarm.data.split import check_split_config, split_events
from qarm.errors import ConfigError, DataError
from qarm.io import write_json, write_parquet

if TYPE_CHECKING:  # the runner imports stages lazily; a runtime import here would be circular-prone
    from qarm.runner import RunDir


@dataclass
class Prepared:
    """Validated, split tables plus what was skipped and where they came from."""

    items: pd.DataFrame
    events: pd.DataFrame
    skipped: Counter
    source: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    ground_truth: pd.DataFrame | None = None
    users_truth: pd.DataFrame | None = None


def _load_movielens(cfg: DataConfig, skipped: Counter, show_progress: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    from qarm.data.movielens import load_movielens, movielens_labels

    if not cfg.path:
        raise ConfigError("data.path: the MovieLens folder is required for source=movielens "
                          "(e.g. --set data.path=../shared/data/movielens-100k)")
    raw = load_movielens(Path(cfg.path))
    text_info: dict = {}
    raw_items = apply_item_text(raw.items, cfg, skipped, text_info)  # data.item_text_file, when set
    items = build_items(raw_items, file=raw.items_file, media_base=raw.root, skipped=skipped,
                        show_progress=show_progress)
    events = movielens_labels(raw.events, cfg.label_columns, cfg.click_min_rating, cfg.like_min_rating,
                              raw.events_file)
    events = validate_events(events, items["item_id"].to_numpy(), cfg.label_columns, file=raw.events_file,
                             skipped=skipped, strict=cfg.strict)
    source = {"source": "movielens", "layout": raw.layout, "path": str(Path(cfg.path).resolve()),
              "items_file": raw.items_file, "events_file": raw.events_file, **raw.extras, **text_info}
    return items, events, source


def _load_files(cfg: DataConfig, skipped: Counter, show_progress: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    if not cfg.items_file or not cfg.events_file:
        raise ConfigError("data.items_file and data.events_file are required for source=files")
    items_path, events_path = resolve_file(cfg.items_file, cfg.path), resolve_file(cfg.events_file, cfg.path)
    text_info: dict = {}
    raw_items = apply_item_text(read_table(items_path, "items"), cfg, skipped, text_info)
    items = build_items(raw_items, file=str(items_path), media_base=items_path.parent, skipped=skipped,
                        show_progress=show_progress)
    events = validate_events(read_table(events_path, "events"), items["item_id"].to_numpy(), cfg.label_columns,
                             file=str(events_path), skipped=skipped, strict=cfg.strict)
    source = {"source": "files", "items_file": str(items_path.resolve()), "events_file": str(events_path.resolve()),
              **text_info}
    return items, events, source


def prepare(cfg: Config, data_dir: Path, show_progress: bool = True) -> Prepared:
    """Load ``cfg.data``, validate, split with ``cfg.split``. Synthetic media go under ``data_dir/media``."""
    check_split_config(cfg.split)
    d = cfg.data
    if not d.label_columns:
        raise ConfigError("data.label_columns: at least one 0/1 label column is needed")
    skipped: Counter = Counter()
    gt = users_truth = None
    if d.source == "synthetic":
        world, items = synthetic_world_items(cfg, data_dir, skipped, show_progress)
        events = validate_events(world.events, items["item_id"].to_numpy(), d.label_columns,
                                 file="<synthetic events>", skipped=skipped, strict=True)
        keep = ["user_id", "item_id", "timestamp", *d.label_columns]
        events = events[keep]
        gt, users_truth = world.ground_truth, world.users
        source = {"source": "synthetic", "seed": cfg.seed}
    elif d.source == "movielens":
        items, events, source = _load_movielens(d, skipped, show_progress)
    elif d.source == "files":
        items, events, source = _load_files(d, skipped, show_progress)
    else:  # the config loader already restricts the value; kept for direct API use
        raise ConfigError(f"data.source: unknown source {d.source!r}; valid: synthetic, movielens, files")
    if len(events) == 0:
        raise DataError("no valid events left after validation; skipped: "
                        + ", ".join(f"{k}={v}" for k, v in sorted(skipped.items()) if v), file=source.get(
                            "events_file", "<synthetic events>"))
    items, events, info = split_events(items, events, cfg.split, cfg.seed)
    return Prepared(items, events, skipped, source, info, gt, users_truth)


def events_table(events: pd.DataFrame, label_columns: list[str]) -> pa.Table:
    """Events as an Arrow table with the contract's column order and types."""
    cols = ["user_id", "item_id", "timestamp", *label_columns]
    if "rating" in events.columns:
        cols.append("rating")
    extras = [c for c in events.columns if c not in cols and c != "split"]
    events = events[cols + extras + ["split"]]
    fields = ([pa.field(c, pa.int64()) for c in ("user_id", "item_id", "timestamp")]
              + [pa.field(c, pa.int8()) for c in label_columns]
              + ([pa.field("rating", pa.float32())] if "rating" in cols else []))
    arrays = [pa.array(events[f.name].to_numpy(), type=f.type) for f in fields]
    extra_table = pa.Table.from_pandas(events[extras], preserve_index=False) if extras else None
    names = [f.name for f in fields]
    if extra_table is not None:
        arrays += list(extra_table.columns)
        names += extras
    arrays.append(pa.array(events["split"]).cast(pa.string()))  # categorical -> plain strings, per contract
    names.append("split")
    return pa.Table.from_arrays(arrays, names=names)


def items_table(items: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(items[ITEMS_SCHEMA.names], schema=ITEMS_SCHEMA, preserve_index=False)


def prepare_metrics(p: Prepared) -> dict[str, Any]:
    items, events = p.items, p.events
    n_items = len(items)
    by_split = events["split"].value_counts()
    share = (lambda col: round(float(items[col].mean()), 6) if n_items else 0.0)
    labels = [c for c in events.columns if events[c].dtype == np.int8]
    return {
        "n_users": int(events["user_id"].nunique()),
        "n_items": n_items,
        "n_events": len(events),
        "n_cold_items": int(items["cold"].sum()),
        "n_holdout_items": int(items["holdout"].sum()),
        "n_events_by_split": {s: int(by_split.get(s, 0)) for s in SPLITS},
        "skipped": {k: int(v) for k, v in sorted(p.skipped.items())},
        "modality_coverage": {m: share(f"has_{m}") for m in ("text", "image", "audio")},
        "modality_items": {m: int(items[f"has_{m}"].sum()) for m in ("text", "image", "audio")},
        "label_rate": {c: round(float(events[c].mean()), 6) for c in labels},
        "freq_buckets": {str(k): int(v) for k, v in items["freq_bucket"].value_counts().sort_index().items()},
        **p.info,
        "source": p.source,
    }


def run_prepare(cfg: Config, run: RunDir) -> dict[str, Any]:
    """Stage entry point: writes items.parquet, events.parquet, data/; returns the prepare figures."""
    if cfg.engine.name == "spark":  # same artifacts, computed with PySpark DataFrames (qarm.engine)
        from qarm.engine.spark_prepare import prepare_spark

        return prepare_spark(cfg, run)
    data_dir = run.subdir("data")
    p = prepare(cfg, data_dir)
    if p.ground_truth is not None:
        write_parquet(data_dir / "ground_truth.parquet", p.ground_truth[["item_id", "topic", "business",
                                                                         "introduced_at", "popularity", "quality"]])
        write_parquet(data_dir / "users_ground_truth.parquet", p.users_truth)
    write_json(data_dir / "source.json", p.source)
    write_parquet(run / "items.parquet", items_table(p.items))
    write_parquet(run / "events.parquet", events_table(p.events, cfg.data.label_columns))
    return prepare_metrics(p)


def synthetic_world_items(cfg: Config, data_dir: Path, skipped: Counter, show_progress: bool = True
                          ) -> tuple[Any, pd.DataFrame]:
    """(the synthetic world, its items table with rendered media) for ``cfg.data.synthetic`` and ``cfg.seed``.

    Media files are written under ``data_dir/media``. The world is generated in this process
    whichever engine runs the stage, so both engines see the same bytes.
    """
    from qarm.data.synthetic import generate_world, render_media

    d: DataConfig = cfg.data
    bad = [c for c in d.label_columns if c not in ("click", "like")]
    if bad:
        raise ConfigError(f"data.label_columns: the synthetic world has labels click and like, not {bad[0]!r}")
    world = generate_world(d.synthetic, cfg.seed, show_progress)
    media = render_media(world, d.synthetic, cfg.seed, data_dir / "media", show_progress)
    raw_items = world.items.merge(media, on="item_id", how="left", validate="one_to_one")
    items = build_items(raw_items, file="<synthetic items>", media_base=data_dir, skipped=skipped,
                        show_progress=show_progress)
    return world, items
