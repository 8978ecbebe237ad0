"""The per-user pass on Spark: Parquet in, ``groupBy("user_id").applyInPandas``, Parquet out.

Spark reads the day's inputs from shared storage (``<inputs>/window``: user_id, pin_id,
ts_us; ``<inputs>/pins``: pin_id, embedding), joins them on its executors, runs the
product's own ``core.user_pass.represent_users`` once per user, and writes the rows
(``core.user_pass.ROW_SCHEMA``) to ``<output>``. The driver only plans the job: no row of
the day passes through it. The local engine runs the same function, so both engines write
the same tables (tested in local mode).

pyspark is an optional extra (``pip install -e '.[spark]'``) and needs Java 17+. On a cluster,
every executor's Python needs this package and its dependencies installed.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd

from ..core.user_pass import ROW_SCHEMA, represent_users
from .workers import BLAS_THREADS

_SPARK_TYPES = {"int64": "long", "string": "string", "double": "double"}
# the per-user row (``core.user_pass.ROW_SCHEMA``) in Spark's DDL
OUTPUT_SCHEMA = ", ".join(f"{f.name} {_SPARK_TYPES[str(f.type)]}" for f in ROW_SCHEMA)


def spark_session(master: str, app_name: str = "pinnersage"):
    """A SparkSession on ``master`` (``local[2]``, ``spark://host:7077``, ``yarn``, ...)."""
    from pyspark.sql import SparkSession

    # Python workers must run this interpreter (it has this package's dependencies), whatever
    # `python3` is on PATH; the environment variable is what local mode honours
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    if master.startswith("local"):
        builder = builder.config("spark.pyspark.python", sys.executable)
    for key in BLAS_THREADS:  # one Spark task per core, one BLAS thread per task, as in the local workers
        builder = builder.config(f"spark.executorEnv.{key}", "1")
    active = SparkSession.getActiveSession()
    if active is not None and active.sparkContext.master != master:
        active.stop()  # getOrCreate would hand back a session on the other master, silently
    return builder.getOrCreate()


def spark_executors(spark) -> int:
    """Executors the application has now (the driver not counted): 0 in local mode."""
    status = spark.sparkContext._jsc.sc().getExecutorMemoryStatus()
    return max(int(status.size()) - 1, 0)


def run_user_pass_spark(
    spark, inputs_uri: str, output_uri: str, *, alpha: float, decay_lambda: float, now_us: int
) -> None:
    """Run the per-user pass over the exported inputs; results land in ``output_uri``."""
    window = spark.read.parquet(f"{inputs_uri}/window")
    pins = spark.read.parquet(f"{inputs_uri}/pins")

    def per_user(rows: pd.DataFrame) -> pd.DataFrame:
        return represent_user_group(rows, alpha=alpha, decay_lambda=decay_lambda, now_us=now_us)

    (
        window.join(pins, "pin_id")
        .groupBy("user_id")
        .applyInPandas(per_user, OUTPUT_SCHEMA)
        .write.mode("overwrite")
        .parquet(output_uri)
    )


def represent_user_group(rows: pd.DataFrame, *, alpha: float, decay_lambda: float, now_us: int) -> pd.DataFrame:
    """One Spark group (one user's actions joined with their pins' embeddings) through the pass."""
    order = np.lexsort((rows["ts_us"].to_numpy(), rows["pin_id"].to_numpy()))
    rows = rows.iloc[order]
    embeddings = np.stack(rows["embedding"].to_numpy()).astype(np.float32, copy=False)
    table = represent_users(
        rows["user_id"].to_numpy(np.int64),
        rows["pin_id"].to_numpy(np.int64),
        rows["ts_us"].to_numpy(np.int64),
        np.arange(len(rows)),
        embeddings,
        alpha=alpha,
        decay_lambda=decay_lambda,
        now_us=now_us,
    )
    return table.to_pandas() if table.num_rows else pd.DataFrame({c: pd.Series(dtype=object) for c in ROW_SCHEMA.names})


def main() -> None:
    """The pass over inputs a pipeline exported, as a Spark application (``engines/spark_submit.py``)."""
    import argparse

    parser = argparse.ArgumentParser(description=run_user_pass_spark.__doc__)
    parser.add_argument("--inputs", required=True, help="folder holding window/ and pins/ Parquet")
    parser.add_argument("--output", required=True, help="folder to write the rows to")
    parser.add_argument("--alpha", type=float, required=True)
    parser.add_argument("--decay-lambda", type=float, required=True)
    parser.add_argument("--now", required=True, help="T_now of Eq. 3, UTC, e.g. 2026-06-11T00:00:00")
    args = parser.parse_args()
    from pyspark.sql import SparkSession

    now_us = int(pd.Timestamp(args.now).value // 1000)
    run_user_pass_spark(
        SparkSession.builder.getOrCreate(),
        args.inputs,
        args.output,
        alpha=args.alpha,
        decay_lambda=args.decay_lambda,
        now_us=now_us,
    )
