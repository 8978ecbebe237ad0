"""Engines of the per-user pass (``core.user_pass``) over one day's window.

Each reads the day's inputs once and writes the pass's rows (``core.user_pass.ROW_SCHEMA``)
as Parquet files into a run folder; ``warehouse.replace_interests`` loads that folder into
``user_clusters`` and ``user_medoids`` in one transaction. The ``engine`` resource
(``resources.ClusteringEngine``) chooses one:

- ``local``: worker processes on this machine, the day's embeddings in shared memory.
- ``spark``: a Spark cluster reads Parquet inputs the pipeline exports and writes Parquet
  results; nothing of the day passes through the driver.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

Connect = Callable[[], Any]  # a context manager yielding a DuckDB connection
PassRunner = Callable[[date, Connect, str, dict[str, Any]], dict[str, Any]]


@contextmanager
def pass_runner(kind: str, *, spark_master: str, workers: int, batch_rows: int) -> Iterator[PassRunner]:
    """``run(day, connect, run_uri, settings) -> figures``: the pass of one day, writing its rows
    under ``<run_uri>/rows``; workers (or the Spark session) live as long as the ``with``."""
    if kind == "spark":
        from .spark import run_spark_pass
        from .spark_job import spark_executors, spark_session

        spark = spark_session(spark_master)

        def run_spark(day: date, connect: Connect, run_uri: str, settings: dict[str, Any]) -> dict[str, Any]:
            _, counts = run_spark_pass(spark, connect, day, run_uri, **settings)
            return {
                "exported_actions": counts["window"],
                "day_pins": counts["pins"],
                "actions_on_pins_left_catalog": counts["left_catalog"],
                "clustering_engine": f"spark ({spark.sparkContext.master})",  # the master that ran it
                "spark_executors": spark_executors(spark),
            }

        try:
            yield run_spark
        finally:
            spark.stop()
        return
    from .local import run_local_pass
    from .workers import UserPool

    processes = workers or os.cpu_count() or 1
    with UserPool(processes) as pool:

        def run_local(day: date, connect: Connect, run_uri: str, settings: dict[str, Any]) -> dict[str, Any]:
            if "://" in run_uri and not run_uri.startswith("file://"):
                raise ValueError(f"the local engine writes to a local exchange root, not {run_uri}")
            stats = run_local_pass(connect, day, Path(run_uri) / "rows", pool, batch_rows=batch_rows, **settings)
            return {
                "batches": stats.batches,
                "largest_batch_rows": stats.largest_batch_rows,
                "day_pins": stats.day_pins,
                "actions_on_pins_left_catalog": stats.actions_on_pins_left_catalog,
                "clustering_workers": processes,
                "clustering_engine": "local",
            }

        yield run_local
