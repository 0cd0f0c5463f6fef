"""Execution engines of the behaviour side (``prepare``, ``pairs``): ``local`` or Apache ``spark``.

The local engine is the code in :mod:`qarm.data` and :mod:`qarm.pairs`. The Spark engine
(:mod:`qarm.engine.spark_prepare`, :mod:`qarm.engine.spark_pairs`) runs the same validation,
split, Swing and trigger mining on PySpark DataFrames and calls the local per-group kernels
inside ``mapInPandas``/``applyInPandas``, so both engines give the same artifacts.
PySpark is an optional extra: ``pip install -e ".[spark]"`` (plus a Java 17 runtime).
"""
