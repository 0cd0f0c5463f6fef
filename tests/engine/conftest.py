"""A real local Spark session for the engine tests (session-scoped: the JVM starts once).

The tests are skipped only when PySpark is not installed; CI installs the ``spark`` extra and a
Java runtime (``.ci/run``), so there they run.
"""

from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture(scope="session")
def spark():
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    from qarm.engine.session import DEFAULT_CONF, REQUIRED_CONF

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master("local[2]").appName("qarm-tests")
    conf = {**DEFAULT_CONF, **REQUIRED_CONF, "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "2", "spark.driver.memory": "1g"}
    for k, v in conf.items():
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
