"""Config of the behaviour-side engine: where ``prepare`` and ``pairs`` do their event-scale work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class EngineConfig:
    """``name``: ``local`` (numpy/pandas in this process, the default) or ``spark`` (PySpark DataFrames).

    ``spark_master`` is any Spark master URL (``local[*]``, ``spark://host:7077``, ``yarn``,
    ``k8s://https://...``); ``spark_conf`` is passed to the session builder untouched (e.g.
    ``spark.driver.memory``, ``spark.hadoop.fs.s3a.endpoint``). ``partitions``: shuffle partitions
    and work buckets of the Spark stages (0: twice the session's default parallelism).
    ``export_uri``: optional Hadoop/Spark URI (``s3a://bucket/run``, ``hdfs:///...``) to which the
    Spark stages also write their event-scale outputs (``events.parquet``, ``pairs.parquet``), for
    jobs that read them from the cluster rather than from the run directory.
    """

    name: Literal["local", "spark"] = "local"
    spark_master: str = "local[*]"
    spark_conf: dict[str, str] = field(default_factory=dict)
    app_name: str = "qarm"
    partitions: int = 0
    export_uri: str = ""
