"""The Spark session of the behaviour stages, and the Parquet I/O they share.

One session per process: :func:`spark_session` returns the active one when there is one (a test
fixture, a notebook, ``spark-submit``), else builds one from :class:`EngineConfig`. The settings
that the equivalence with the local engine depends on (UTC session time zone, Arrow transfer)
are always set; everything else comes from ``engine.spark_conf``.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from qarm.engine.config import EngineConfig
from qarm.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Timestamps parse as UTC, as in the local engine (naive ISO-8601 strings are UTC there too).
REQUIRED_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}
# Defaults that suit one machine; engine.spark_conf overrides them.
DEFAULT_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.parquet.compression.codec": "zstd",
}


def require_pyspark():
    """Import pyspark, or a ConfigError saying how to install the extra."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise ConfigError("engine.name=spark needs PySpark and a Java 17 runtime: pip install -e \".[spark]\" "
                          "(and e.g. apt-get install openjdk-17-jre-headless)") from None
    return pyspark


def spark_session(cfg: EngineConfig) -> "SparkSession":
    """The active SparkSession, or a new one for ``cfg.spark_master`` with ``cfg.spark_conf``."""
    require_pyspark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        for k, v in REQUIRED_CONF.items():
            active.conf.set(k, v)
        return active
    # Python workers must run this interpreter (it has qarm and the kernels they call).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(cfg.spark_master).appName(cfg.app_name)
    for k, v in {**DEFAULT_CONF, **{str(k): str(v) for k, v in cfg.spark_conf.items()}, **REQUIRED_CONF}.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def n_buckets(spark: "SparkSession", cfg: EngineConfig) -> int:
    """Work buckets / shuffle partitions: ``cfg.partitions`` or twice the default parallelism."""
    return cfg.partitions if cfg.partitions > 0 else max(2, 2 * spark.sparkContext.defaultParallelism)


def is_uri(path: str) -> bool:
    """``s3a://...``, ``hdfs://...``, ``file:///...``: a Hadoop URI rather than a local path."""
    return "://" in str(path)


def write_dataset(df: "DataFrame", path: Path, export_uri: str = "") -> None:
    """Write ``df`` as a Parquet dataset folder at ``path``, atomically, with deterministic part names.

    Spark writes into a hidden temp folder beside ``path``; its part files are renamed
    ``part-00000.parquet``, ... in partition order (so a sorted DataFrame reads back in order, and
    the same data gives the same bytes and names), Spark's checksum and marker files are dropped,
    and the folder replaces ``path`` (a file or folder from an earlier run). With ``export_uri``
    the same DataFrame is also written to ``<export_uri>/<path.name>``.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    df.write.mode("overwrite").parquet(str(tmp.resolve()))
    parts = sorted(p for p in tmp.iterdir() if p.name.startswith("part-") and p.name.endswith(".parquet"))
    for p in tmp.iterdir():
        if p not in parts:
            p.unlink()
    for k, p in enumerate(parts):
        p.rename(tmp / f"part-{k:05d}.parquet")
    old = path.parent / f".{path.name}.{uuid.uuid4().hex}.old.tmp"
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    if export_uri:
        df.write.mode("overwrite").parquet(export_uri.rstrip("/") + "/" + path.name)


class StepLog:
    """Wall time of each step of a Spark stage, logged on ``qarm.engine`` (INFO) as it finishes."""

    def __init__(self, stage: str) -> None:
        import logging
        import time

        self.log, self.stage, self.clock = logging.getLogger("qarm.engine"), stage, time.perf_counter
        self.t = self.clock()
        self.steps: dict[str, float] = {}

    def __call__(self, step: str) -> None:
        now = self.clock()
        self.steps[step] = round(now - self.t, 3)
        self.log.info("[%s] %s: %.1fs", self.stage, step, now - self.t)
        self.t = now
