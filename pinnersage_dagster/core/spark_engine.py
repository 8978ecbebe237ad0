"""The per-user clustering on Spark: ``groupBy("user_id").applyInPandas(...)``.

The function applied to each user's rows is the product's own ``cluster_users``, so the
Spark engine and the local engine compute the same clusters (tested in local mode).
pyspark is an optional extra (``pip install -e '.[spark]'``) and needs Java 17+.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd

from .clustering import MEMBER_COLUMNS, cluster_users

INPUT_SCHEMA = "user_id long, pin_id long, embedding array<float>"
OUTPUT_SCHEMA = "user_id long, cluster_id long, pin_id long, kind string, merge_cost double"


def spark_session(master: str, app_name: str = "pinnersage"):
    """A SparkSession on ``master`` (``local[2]``, ``spark://host:7077``, ``yarn``, ...).

    On a cluster, executors need this package and its dependencies installed in their Python.
    """
    from pyspark.sql import SparkSession

    # Python workers must run this interpreter (it has this package's dependencies), whatever
    # `python3` is on PATH; the environment variable is what local mode honours
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.pyspark.python", sys.executable)  # workers import this environment's packages
        .getOrCreate()
    )


def cluster_users_spark(
    spark, user_ids: np.ndarray, pin_ids: np.ndarray, embeddings: np.ndarray, alpha: float
) -> pd.DataFrame:
    """``cluster_users`` for a batch of users, one Spark group per user."""
    frame = pd.DataFrame(
        {"user_id": user_ids, "pin_id": pin_ids, "embedding": list(np.asarray(embeddings, dtype=np.float32))}
    )

    def per_user(rows: pd.DataFrame) -> pd.DataFrame:
        rows = rows.sort_values("pin_id", kind="stable")  # the local engine's order within a user
        matrix = np.stack(rows["embedding"].to_numpy()).astype(np.float32)
        return cluster_users(rows["user_id"].to_numpy(), rows["pin_id"].to_numpy(), matrix, alpha)

    result = (
        spark.createDataFrame(frame, schema=INPUT_SCHEMA)
        .groupBy("user_id")
        .applyInPandas(per_user, OUTPUT_SCHEMA)
        .toPandas()
    )
    return result[MEMBER_COLUMNS].sort_values(["user_id", "cluster_id", "pin_id"], kind="stable").reset_index(drop=True)
